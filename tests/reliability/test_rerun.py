"""Rerunning the whole workbook, or any one notebook, leaves every table as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from processes import read_tables

from workbook import store
from workbook.run import NOTEBOOKS

pytestmark = pytest.mark.spark

# The size of the quick benchmark: notebook 03 checks that the model beats the amount
# rule, which needs enough fraud in both its training and its test days.
RUN = ["-m", "workbook.run", "--rows", "50000", "--days", "14"]
# A short loop in 06, long enough for late labels, quality and a decision.
RUN += ["--loop-days", "3", "--drift-from-day", "1", "--label-delay", "1"]
# Set by each run to the time it ran; everything else must be equal.
VOLATILE = {"inference_timestamp"}


def run_workbook(lakehouse: Path, runs: Path, *only: str) -> None:
    env = {**os.environ, "WORKBOOK_LAKEHOUSE": str(lakehouse), "WORKBOOK_PROFILE": "local"}
    command = [sys.executable, *RUN, "--runs-dir", str(runs)]
    if only:
        command += ["--only", *only]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


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
def first_run(spark, tmp_path_factory) -> tuple[Path, dict[str, Counter]]:
    """The workbook run once on a fresh lakehouse, and every table as it left them."""
    lakehouse = tmp_path_factory.mktemp("rerun") / "lakehouse"
    run_workbook(lakehouse, lakehouse.parent / "runs")
    with pytest.MonkeyPatch.context() as monkeypatch:
        before = snapshot(spark, lakehouse, monkeypatch)
    assert {"raw-data-bucket/financial_data_delta", "online"} <= set(before)
    return lakehouse, before


def rerun_changes_nothing(spark, first_run, tally, monkeypatch, *only: str) -> None:
    lakehouse, before = first_run
    with tally.fault(f"rerun of {' '.join(only) or 'the whole workbook'}") as outcome:
        run_workbook(lakehouse, lakehouse.parent / "runs", *only)
        after = snapshot(spark, lakehouse, monkeypatch)
        assert set(after) == set(before)
        for name in before:
            outcome.compare(before[name].elements(), after[name].elements())


def test_rerunning_the_workbook_changes_no_table(spark, first_run, tally, monkeypatch):
    rerun_changes_nothing(spark, first_run, tally, monkeypatch)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_rerunning_one_notebook_changes_no_table(spark, first_run, tally, monkeypatch, notebook):
    """Each notebook run again on its own, after the whole workbook."""
    rerun_changes_nothing(spark, first_run, tally, monkeypatch, notebook)
