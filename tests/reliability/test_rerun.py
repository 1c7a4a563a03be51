"""Rerunning any notebook, or the whole workbook, after the whole workbook leaves every table
as it was.

The workbook runs a second time as ``make run`` runs it (one kernel: one JVM start, not
six). Each notebook then reran after the others had, on the tables they left; every Delta
table is read as of the last commit each notebook made to it (time travel) and compared
with the first run's, so a change is traced to the notebook that made it. The online table
is compared at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import quick_workbook
from lakehouse_rows import delta_tables, online_rows, table_rows
from processes import Worker, run_worker, wait_until
from pyspark.sql import functions as F

from workbook import lakehouse, names, simulator
from workbook.run import NOTEBOOKS

pytestmark = pytest.mark.spark


def commits_since(spark, path: str, version: int) -> list[tuple[int, datetime]]:
    """The table's commits after ``version``: (version, time), oldest first."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").filter(F.col("version") > version)
    return sorted(
        (r["version"], r["timestamp"]) for r in history.select("version", "timestamp").collect()
    )


def notebook_windows(runs: Path) -> dict[str, tuple[datetime, datetime]]:
    """When each notebook of the newest run started and ended (papermill records both)."""
    windows = {}
    for name in NOTEBOOKS:
        meta = json.loads((runs / "latest" / f"{name}.ipynb").read_text())["metadata"]["papermill"]
        # In this machine's time, as Spark gives the commits' times to Python.
        windows[name] = tuple(
            datetime.fromisoformat(meta[k]).astimezone().replace(tzinfo=None)
            for k in ("start_time", "end_time")
        )
    return windows


@pytest.fixture(scope="module")
def first_run(spark) -> Iterator[tuple[quick_workbook.WorkbookRun, dict]]:
    """The whole workbook run once (the quick size), and every table as it left them."""
    with quick_workbook.fresh_copy() as run, pytest.MonkeyPatch.context() as monkeypatch:
        tables = delta_tables(run.lakehouse)
        assert "raw-data-bucket/financial_data_delta" in tables
        before = {
            name: (table_rows(spark, path), lakehouse.table_version(spark, path))
            for name, path in tables.items()
        }
        before["online"] = (online_rows(run.lakehouse, monkeypatch), None)
        yield run, before


def test_rerunning_the_workbook_changes_no_table(spark, first_run, tally, monkeypatch):
    """01 to 06 again, one after the other: each notebook's last commit to each table, and
    the online table at the end, hold the rows the first run left."""
    run, before = first_run
    with tally.fault("rerun of each notebook (01-06, as the whole workbook)") as outcome:
        run.run()
        tables = delta_tables(run.lakehouse)
        assert set(tables) | {"online"} == set(before), "a table appeared or disappeared"
        windows = notebook_windows(run.lakehouse.parent / "runs")
        compared, changed = 0, []
        for name, path in tables.items():
            rows, version = before[name]
            last_commit = {}  # notebook -> its last commit to this table
            for commit, at in commits_since(spark, path, version):
                writer = [nb for nb, (start, end) in windows.items() if start <= at <= end]
                assert writer, f"{name}: version {commit} at {at} was written by no notebook"
                last_commit[writer[0]] = commit
            for notebook, commit in last_commit.items():
                after = table_rows(spark, path, commit)
                outcome.compare(rows.elements(), after.elements())
                if after != rows:
                    changed.append(f"{notebook} changed {name} (version {commit})")
                compared += 1
        online = online_rows(run.lakehouse, monkeypatch)
        outcome.compare(before["online"][0].elements(), online.elements())
        assert not changed, changed
        print(f"{compared} table versions the rerun wrote, and the online table, as before")


def test_a_daily_step_killed_midway_then_run_again_loses_nothing(spark, first_run, tally, tmp_path):
    """One more day of 06, SIGKILLed (Python and JVM, as when a kernel dies) once the day is
    ingested, then the step again: the day ends decided once, each transaction once in raw
    and in the predictions, and every raw (account, day) with its feature row. Last in
    this module: it adds a day to the lakehouse the rerun above compares.
    """
    root = first_run[0].lakehouse
    env = {"WORKBOOK_LAKEHOUSE": str(root), "WORKBOOK_PROFILE": "local"}
    paths = {
        location.name: str(root / location.bucket / location.name)
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

        manifest = root / names.SIMULATION_MANIFEST.bucket / names.SIMULATION_MANIFEST.name
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
