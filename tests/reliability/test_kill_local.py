"""Killed in the middle of a run: ingestion and streaming scoring, on the local profile.

Each run happens in a worker process that is SIGKILLed mid-run (its Python alone, or its
JVM and Python together, as when a kernel dies), then started again on the same
checkpoint. The tables must end as if nothing had happened: every transaction once. The
last test makes the state a kill leaves between a batch's predictions commit and the
checkpoint's, a gap too short to aim a kill at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import expected_ingestion
from processes import kill_mid_run, read_tables, run_worker
from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from workbook import features, inference, ingest, lakehouse, names, simulator, sources, train
from workbook.simulator import SimulationConfig

pytestmark = pytest.mark.spark

# Four landed files (one micro-batch each) of about 500 events.
INGEST = SimulationConfig(n_transactions=2000, days=4, n_accounts=100, malformed_share=0.01)
KILLS = {"python": False, "jvm_and_python": True}


def kill_moment(kill: str, table: str) -> dict:
    """Python alone dies a second into the batch (reading); with its JVM, as the batch's first
    data file lands in ``table`` (writing)."""
    return {"writing_to": table} if KILLS[kill] else {"into_batch": 1.0}


@pytest.mark.parametrize("kill", KILLS)
def test_ingestion_killed_mid_run(spark, tmp_path: Path, tally, kill):
    landing = tmp_path / "landing"
    sources.land_files(INGEST, landing)
    task = {
        "job": "ingest",
        "landing": str(landing),
        "raw": str(tmp_path / "raw"),
        "quarantine": str(tmp_path / "quarantine"),
        "checkpoint": str(tmp_path / "checkpoint"),
    }
    valid_ids, refused = expected_ingestion(INGEST)
    with tally.fault(f"ingestion (files): kill {kill} mid-run") as outcome:
        committed = kill_mid_run(
            task,
            tmp_path / "worker.log",
            task["checkpoint"],
            KILLS[kill],
            1,
            **kill_moment(kill, task["raw"]),
        )
        assert committed < INGEST.days, "killed after the run had finished"
        run_worker(task, tmp_path / "worker.log")
        tables = read_tables(
            {"raw": task["raw"], "quarantine": task["quarantine"]}, tmp_path, spark
        )
        outcome.compare(valid_ids, [r[names.TRANSACTION_ID] for r in tables["raw"]])
        outcome.compare(refused, [r[names.RECORD_ID] for r in tables["quarantine"]])


# -- streaming scoring --------------------------------------------------------------------

SCORING = SimulationConfig(n_transactions=1500, days=3, n_accounts=80)


@pytest.fixture(scope="module")
def scoring_lakehouse(spark, tmp_path_factory):
    """Raw transactions, their daily features and a small trained pipeline, on disk."""
    root = tmp_path_factory.mktemp("scoring")
    paths = {
        "landing": root / "landing",
        "raw": root / "raw",
        "features": root / "features",
        "model": root / "model",
        "predictions": root / "predictions",
    }
    paths = {k: str(v) for k, v in paths.items()}
    ingest_days(spark, SCORING, paths, root)
    raw = spark.read.format("delta").load(paths["raw"])
    daily = features.daily_account_features(raw)
    daily.write.format("delta").mode("overwrite").save(paths["features"])
    _, labels = simulator.simulate(SCORING)
    # Any fitted pipeline will do: what is under test is the stream around it.
    training = train.training_set(
        raw, spark.read.format("delta").load(paths["features"]), spark.createDataFrame(labels)
    ).withColumn(names.CLASS_WEIGHT, F.lit(1.0))
    train.build_pipeline(max_iter=10).fit(training).write().overwrite().save(paths["model"])
    return root, paths


def ingest_days(spark, config: SimulationConfig, paths: dict, root: Path) -> None:
    sources.land_files(config, paths["landing"])
    events = sources.landed_files_stream(spark, paths["landing"], max_files_per_trigger=1)
    query = ingest.start_ingest(
        spark, events, paths["raw"], str(root / "quarantine"), str(root / "ingest-checkpoint")
    )
    query.awaitTermination()


@pytest.mark.parametrize("kill", KILLS)
def test_scoring_killed_mid_run(spark, scoring_lakehouse, tally, kill, tmp_path: Path):
    """Each kill scores new raw commits; the second one also starts from the first's checkpoint."""
    root, paths = scoring_lakehouse
    if kill == "jvm_and_python":  # another day arrives for this run to score
        ingest_days(spark, SCORING.following_days(1), paths, root)
    task = {"job": "score", **{k: paths[k] for k in ("model", "raw", "features", "predictions")}}
    checkpoint = f"{paths['predictions']}/_checkpoint"
    done_before = 0 if kill == "python" else 1  # the batch the kill must land in
    with tally.fault(f"streaming scoring: kill {kill} mid-run") as outcome:
        committed = kill_mid_run(
            task,
            tmp_path / "worker.log",
            checkpoint,
            KILLS[kill],
            done_before,
            **kill_moment(kill, paths["predictions"]),
        )
        assert committed == done_before, "killed after the batch had committed"
        run_worker(task, tmp_path / "worker.log")
        tables = read_tables(
            {"raw": paths["raw"], "predictions": paths["predictions"]}, root, spark
        )
        outcome.compare(
            [r[names.TRANSACTION_ID] for r in tables["raw"]],
            [r[names.TRANSACTION_ID] for r in tables["predictions"]],
        )


def test_scoring_batch_replayed_after_its_commit(spark, scoring_lakehouse, tally, tmp_path: Path):
    """Killed between a batch's predictions commit and the checkpoint's: the batch runs again.

    That gap lasts a fraction of a second, too short to aim a kill at; the test leaves what
    such a kill leaves (the checkpoint without its last commit) and restarts the query.
    """
    root, paths = scoring_lakehouse
    predictions = str(tmp_path / "predictions")
    commits = Path(lakehouse.checkpoint_of(predictions)) / "commits"
    model = PipelineModel.load(paths["model"])

    def score() -> None:
        inference.start_scoring(
            spark, model, "test", paths["raw"], paths["features"], predictions, starting_version=0
        ).awaitTermination()

    with tally.fault("streaming scoring: batch replayed after its commit") as outcome:
        score()
        last = max(int(p.name) for p in commits.iterdir() if p.name.isdigit())
        for name in (str(last), f".{last}.crc"):
            (commits / name).unlink()
        score()
        assert (commits / str(last)).exists(), "the batch was not run again"
        tables = read_tables({"raw": paths["raw"], "predictions": predictions}, root, spark)
        outcome.compare(
            [r[names.TRANSACTION_ID] for r in tables["raw"]],
            [r[names.TRANSACTION_ID] for r in tables["predictions"]],
        )
