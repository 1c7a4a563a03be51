"""The whole workbook, headless, at a small size: its summary within tolerances.

nbval compares every output of the default run exactly; this test runs the chain the way
``make run`` does, at another size, and checks what a learner would look at in
``runs/latest/summary.json``: the tables are consistent with each other and the model's
metrics are where this size puts them. A change that degrades the model (a leak removed
the wrong way, a broken feature) moves the metrics out of their tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbook.run import NOTEBOOKS

pytestmark = pytest.mark.spark

ROWS, DAYS, SEED = 50_000, 14, 42
# Measured at this size and seed; the tolerance allows for another platform's floating
# point, not for another model.
EXPECTED = {"roc_auc": (0.979, 0.01), "pr_auc": (0.448, 0.03)}


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    lakehouse = tmp_path_factory.mktemp("smoke-lakehouse")
    runs = tmp_path_factory.mktemp("smoke-runs")
    env = {**os.environ, "WORKBOOK_LAKEHOUSE": str(lakehouse), "WORKBOOK_PROFILE": "local"}
    command = [sys.executable, "-m", "workbook.run", "--rows", str(ROWS), "--days", str(DAYS)]
    command += ["--seed", str(SEED), "--runs-dir", str(runs)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((runs / "latest" / "summary.json").read_text())


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_model_metrics_within_tolerance(summary, metric):
    expected, tolerance = EXPECTED[metric]
    assert summary["model"][metric] == pytest.approx(expected, abs=tolerance)


def test_tables_agree_with_each_other(summary):
    rows = summary["rows"]
    assert rows["raw"] > ROWS, "legitimate transactions plus the injected fraud"
    assert rows["labels"] >= rows["raw"] - rows["predictions"], "every trained-on row labelled"
    assert 0 < rows["quarantine"] < 0.02 * rows["raw"]
    assert 0 < rows["predictions"] < rows["raw"] / DAYS * 2, "about one new day scored"
    assert rows["features"] >= rows["online_store"] > 0


def test_every_notebook_ran_and_was_timed(summary):
    assert set(summary["wall_seconds"]) == {*NOTEBOOKS, "total"}
    assert all(seconds > 0 for seconds in summary["wall_seconds"].values())
    assert summary["peak_rss_mb"] > 0
    assert summary["parameters"] == {"n_transactions": ROWS, "days": DAYS, "seed": SEED}
