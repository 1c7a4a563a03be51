"""Rerunning the whole workbook (every notebook, headless) leaves every table as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from processes import read_tables

from workbook import store

pytestmark = pytest.mark.spark

# The size of the quick benchmark: notebook 03 checks that the model beats the amount
# rule, which needs enough fraud in both its training and its test days.
RUN = ["-m", "workbook.run", "--rows", "50000", "--days", "14"]
# Set by each run to the time it ran; everything else must be equal.
VOLATILE = {"inference_timestamp"}


def run_workbook(lakehouse: Path, runs: Path) -> None:
    env = {**os.environ, "WORKBOOK_LAKEHOUSE": str(lakehouse), "WORKBOOK_PROFILE": "local"}
    result = subprocess.run(
        [sys.executable, *RUN, "--runs-dir", str(runs)], env=env, capture_output=True, text=True
    )
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
        rows["online"] = store.read_all(conn).to_dict("records")
    finally:
        conn.close()
    return {
        name: Counter(
            repr(sorted((k, v) for k, v in r.items() if k not in VOLATILE)) for r in table
        )
        for name, table in rows.items()
    }


@pytest.mark.xfail(
    strict=True,
    reason="known defect: 04 appends the next day, so a second run of 02 and 03 sees it (new "
    "feature rows, another test split); 02 and 03 should be limited to the simulated period",
)
def test_rerunning_the_workbook_changes_no_table(spark, tmp_path: Path, tally, monkeypatch):
    lakehouse = tmp_path / "lakehouse"
    run_workbook(lakehouse, tmp_path / "runs")
    before = snapshot(spark, lakehouse, monkeypatch)
    assert {"raw-data-bucket/financial_data_delta", "online"} <= set(before)
    with tally.fault("rerun of the whole workbook (notebooks 01-05)") as outcome:
        run_workbook(lakehouse, tmp_path / "runs")
        after = snapshot(spark, lakehouse, monkeypatch)
        assert set(after) == set(before)
        for name in before:
            outcome.compare(before[name].elements(), after[name].elements())
