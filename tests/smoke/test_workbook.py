"""The whole workbook, headless, at a small size: its summary within tolerances.

nbval compares every output of the default run exactly; this test runs the chain the way
``make run`` does, at another size, and checks what a learner would look at in
``runs/latest/summary.json``: the tables are consistent with each other and the model's
metrics are where this size puts them. A change that degrades the model (a leak removed
the wrong way, a broken feature) moves the metrics out of their tolerance.
"""

from __future__ import annotations

import pytest
from quick_workbook import DAYS, DRIFT_FROM_DAY, LABEL_DELAY, LOOP_DAYS, ROWS, SEED

from workbook.run import NOTEBOOKS

pytestmark = pytest.mark.spark

# Measured at this size and seed; the tolerance allows for another platform's floating
# point, not for another model.
EXPECTED = {"roc_auc": (0.978, 0.01), "pr_auc": (0.569, 0.03)}


@pytest.fixture(scope="module")
def summary(workbook_run) -> dict:
    return workbook_run.summary


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
    assert summary["parameters"] == {
        "n_transactions": ROWS,
        "days": DAYS,
        "seed": SEED,
        "loop_days": LOOP_DAYS,
        "drift_from_day": DRIFT_FROM_DAY,
        "label_delay_days": LABEL_DELAY,
    }


def test_the_run_leaves_no_server_behind(workbook_run):
    assert (workbook_run.lakehouse / "_postgres" / "PG_VERSION").exists(), "05 used the store"
    assert workbook_run.servers_left == ()
