"""Rerunning any one notebook after the whole workbook leaves every table as it was.

The notebooks are run again one by one, in their order: together a second run of the whole
workbook, with every table compared after each notebook, so a change is traced to the
notebook that made it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import quick_workbook
from processes import Worker, read_tables, run_worker, wait_until
from pyspark.sql import functions as F

from workbook import names, simulator, store
from workbook.run import NOTEBOOKS

pytestmark = pytest.mark.spark

# Set by each run to the time it ran; everything else must be equal.
VOLATILE = {"inference_timestamp"}


def snapshot(spark, lakehouse: Path, monkeypatch) -> dict[str, Counter]:
    """Every Delta table of the lakehouse and the online table, as multisets of rows."""
    tables = {
        str(log.parent.relative_to(lakehouse)): str(log.parent)
        for log in lakehouse.glob("*/**/_delta_log")
        if "_checkpoint" not in log.parts
    }
    rows = read_tables(tables, lakehouse, spark)
    monkeypatch.setenv("WORKBOOK_LAKEHOUSE", str(lakehouse))  # its embedded PostgreSQL
    conn = store.connect()
    try:
        rows["online"] = store.read_all().to_dict("records")
    finally:
        conn.close()
    return {
        name: Counter(
            repr(sorted((k, v) for k, v in r.items() if k not in VOLATILE)) for r in table
        )
        for name, table in rows.items()
    }


@pytest.fixture(scope="module")
def first_run(spark) -> Iterator[tuple[quick_workbook.WorkbookRun, dict[str, Counter]]]:
    """The whole workbook run once (the quick size), and every table as it left them."""
    with quick_workbook.fresh_copy() as run, pytest.MonkeyPatch.context() as monkeypatch:
        before = snapshot(spark, run.lakehouse, monkeypatch)
        assert {"raw-data-bucket/financial_data_delta", "online"} <= set(before)
        yield run, before


def rerun_changes_nothing(spark, first_run, tally, monkeypatch, notebook: str) -> None:
    run, before = first_run
    with tally.fault(f"rerun of {notebook}") as outcome:
        run.run(notebook)
        after = snapshot(spark, run.lakehouse, monkeypatch)
        assert set(after) == set(before)
        for name in before:
            outcome.compare(before[name].elements(), after[name].elements())


@pytest.mark.parametrize("notebook", NOTEBOOKS)  # in the workbook's order
def test_rerunning_one_notebook_changes_no_table(spark, first_run, tally, monkeypatch, notebook):
    """Each notebook run again on its own, after the whole workbook and the reruns before it."""
    rerun_changes_nothing(spark, first_run, tally, monkeypatch, notebook)


def test_a_daily_step_killed_midway_then_run_again_loses_nothing(spark, first_run, tally, tmp_path):
    """One more day of 06, SIGKILLed (Python and JVM, as when a kernel dies) once the day is
    ingested, then the step again: the day ends decided once, each transaction once in raw
    and in the predictions, and every raw (account, day) with its feature row. Last in
    this module: it adds a day to the lakehouse the reruns above compare.
    """
    lakehouse = first_run[0].lakehouse
    env = {"WORKBOOK_LAKEHOUSE": str(lakehouse), "WORKBOOK_PROFILE": "local"}
    paths = {
        location.name: str(lakehouse / location.bucket / location.name)
        for location in (
            names.RAW_TABLE,
            names.PREDICTIONS_TABLE,
            names.FEATURES_TABLE,
            names.DECISIONS_TABLE,
        )
    }
    raw_log = Path(paths[names.RAW_TABLE.name]) / "_delta_log"

    def commits() -> int:
        return len(list(raw_log.glob("*.json")))

    task, log = {"job": "loop", "label_delay": quick_workbook.LABEL_DELAY}, tmp_path / "loop.log"
    with tally.fault("daily step (06): kill Python and JVM mid-step, run again") as outcome:
        ingested = commits()
        worker = Worker(task, log, env)
        try:
            wait_until(
                lambda: worker.process.poll() is not None or commits() > ingested,
                600,
                "the day's ingestion",
            )
            assert worker.process.poll() is None, "the step ended before it could be killed"
            time.sleep(3)  # into the features, the online store or scoring
            worker.kill(jvm_too=True)
        finally:
            if worker.process.poll() is None:
                worker.process.kill()
        run_worker(task, log, env, timeout=900)

        manifest = lakehouse / names.SIMULATION_MANIFEST.bucket / names.SIMULATION_MANIFEST.name
        # The world the worker's step simulated: the period's, without a drift scenario.
        config = replace(simulator.SimulationConfig.from_json(manifest.read_text()), drift=None)
        tables = {name: spark.read.format("delta").load(path) for name, path in paths.items()}
        decided = tables[names.DECISIONS_TABLE.name].agg(F.max(names.MONITORED_DAY)).first()[0]
        valid, _ = simulator.simulate(config.one_day(config.index_of(decided)))
        want = list(valid[names.TRANSACTION_ID])

        def ids_of_day(name: str) -> list[str]:
            day = tables[name].filter(F.to_date(names.TIMESTAMP) == F.lit(decided))
            return [r[0] for r in day.select(names.TRANSACTION_ID).collect()]

        outcome.compare(want, ids_of_day(names.RAW_TABLE.name))
        outcome.compare(want, ids_of_day(names.PREDICTIONS_TABLE.name))
        days = tables[names.DECISIONS_TABLE.name].select(names.MONITORED_DAY).collect()
        outcome.compare(sorted({r[0] for r in days}), [r[0] for r in days])
        keys = tables[names.RAW_TABLE.name].select(
            names.ACCOUNT_ID, F.to_date(names.TIMESTAMP).alias(names.TRANSACTION_DATE)
        )
        unfeatured = keys.join(
            tables[names.FEATURES_TABLE.name], list(names.FEATURE_KEYS), "left_anti"
        )
        outcome.compare([], [tuple(r) for r in unfeatured.collect()])
        reports = [line for line in log.read_text().splitlines() if line.startswith('{"day"')]
        assert json.loads(reports[-1])["day"] == str(decided)
