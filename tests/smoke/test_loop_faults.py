"""Faults of the daily step, after the smoke run's loop: a day of malformed events only, a
day without events, labels that never arrive, a challenger with nothing to be compared on,
one that cannot win, and a valid event that arrives a day late.

Each must end in a clear decision and leave the alias, the feature table and the online
store whole. The days run in one process (``fault_days.py``); the tests read what it saw
and the tables it left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from workbook import features, names

from .test_loop import of_day, table

pytestmark = pytest.mark.spark
WORKER = Path(__file__).with_name("fault_days.py")


@pytest.fixture(scope="module")
def faults(workbook_run, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("faults") / "faults.json"
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        env=workbook_run.environment(),
        cwd=WORKER.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def day_of(found: dict) -> date:
    return date.fromisoformat(found["report"]["day"])


def rows_from(frame, day) -> pd.DataFrame:
    """Feature rows from ``day`` on, in key order, to compare two tables."""
    return (
        frame.filter(F.col(names.TRANSACTION_DATE) >= F.lit(day))
        .toPandas()
        .sort_values(list(names.FEATURE_KEYS))
        .reset_index(drop=True)
    )


def test_a_day_of_malformed_events_lands_in_quarantine_and_changes_nothing(
    spark, workbook_run, faults
):
    bad, before = faults["days"][0], faults["before"]
    report = bad["report"]
    assert report["predictions"] == 0 and report["feature_days"] == [] and not report["retrain"]
    assert report["reason"].startswith(f"keep version {before['aliases']['champion']}: no valid")
    assert bad["aliases"] == before["aliases"] and bad["online"] == before["online"]
    quarantined = table(spark, workbook_run, names.QUARANTINE_TABLE).filter(
        F.col(names.RECORD_ID).isin(faults["malformed_records"])
    )
    assert quarantined.count() == len(faults["malformed_records"]) > 0
    assert quarantined.filter(F.col(names.REASON).isNull()).count() == 0
    assert of_day(table(spark, workbook_run, names.RAW_TABLE), day_of(bad)).count() == 0


def test_labels_that_never_arrive_are_named_in_the_decision(spark, workbook_run, faults):
    report = faults["days"][0]["report"]
    lost = faults["lost_labels"]
    assert report["labels_lost"] == lost and report["labels_of"] is None
    assert f"the labels of {lost} have not arrived" in report["reason"]
    raw = of_day(table(spark, workbook_run, names.RAW_TABLE), date.fromisoformat(lost))
    labels = table(spark, workbook_run, names.LABELS_TABLE)
    assert raw.count() > 0 and raw.join(labels, names.TRANSACTION_ID).count() == 0


def test_a_day_without_events_changes_nothing(faults):
    empty, before = faults["days"][1], faults["before"]
    assert empty["report"]["events"] == {"days": 1, "lines": 0}
    assert empty["report"]["predictions"] == 0 and empty["report"]["feature_days"] == []
    assert "no valid transaction arrived" in empty["report"]["reason"]
    assert empty["aliases"] == before["aliases"] and empty["online"] == before["online"]


def test_a_challenger_without_labelled_fraud_to_meet_is_not_trained(faults):
    day, before = faults["days"][2], faults["before"]
    report = day["report"]
    assert report["retrain"] and report["challenger"] is None
    assert (
        "none could be trained" in report["reason"] and "no fraud to compare on" in report["reason"]
    )
    assert day["aliases"] == before["aliases"]


def test_a_challenger_that_cannot_win_leaves_the_champion(faults):
    day, before = faults["days"][3], faults["before"]
    report = day["report"]
    assert report["retrain"] and report["challenger"] not in (None, before["aliases"]["champion"])
    assert "kept the champion" in report["reason"]
    assert report["champion"] == before["aliases"]["champion"]
    assert day["aliases"] == {
        "champion": before["aliases"]["champion"],
        "challenger": report["challenger"],
    }


def test_a_challenger_is_binned_for_drift_when_trained_on_the_rows_it_was_tested_on(faults):
    reference = faults["challenger_reference"]
    kept, again = reference["kept"], reference["again"]
    assert (
        kept["categorical"] == again["categorical"]
        and kept["edges"].keys() == again["edges"].keys()
    )
    for column, edges in kept["edges"].items():
        assert edges == pytest.approx(again["edges"][column]), column
    assert {(c, b): s for c, b, s in kept["shares"]} == pytest.approx(
        {(c, b): s for c, b, s in again["shares"]}
    )


def test_the_days_after_the_quiet_ones_are_featured_as_the_whole_table(spark, workbook_run, faults):
    """The ordinary day brings the feature table and the online store up to date: its
    rows, and the idle rows of the two days without data, equal a computation from scratch."""
    quiet = [day_of(found) for found in faults["days"][:3]]
    assert faults["days"][2]["report"]["feature_days"] == [str(d) for d in quiet]
    raw = table(spark, workbook_run, names.RAW_TABLE)
    stored = table(spark, workbook_run, names.FEATURES_TABLE)
    want = rows_from(features.daily_account_features(raw), quiet[0])
    # Averages are rounded to 4 places; Spark adds in partition order, so an exact tie (a sum
    # over 4 or 8 rows) may round either way: one unit of the last place apart at most.
    pd.testing.assert_frame_equal(
        rows_from(stored, quiet[0]), want, check_exact=False, rtol=0, atol=1.5e-4
    )
    online = faults["days"][2]["online"]
    accounts = want[want[names.TRANSACTION_DATE] == quiet[2]][names.ACCOUNT_ID].nunique()
    assert online == [accounts, str(quiet[2]), str(quiet[2])]


def test_a_late_event_brings_its_day_and_the_days_after_up_to_date(spark, workbook_run, faults):
    """A valid event of day 4 that comes with day 5: day 4's row of its account counts it, and
    every row from day 4 on equals a computation from scratch (a MERGE of the touched days)."""
    late, day = faults["late_event"], faults["days"][4]
    touched = faults["days"][3]["report"]["day"]
    assert day["report"]["feature_days"] == [touched, day["report"]["day"]]
    raw = table(spark, workbook_run, names.RAW_TABLE)
    assert raw.filter(F.col(names.TRANSACTION_ID) == late[names.TRANSACTION_ID]).count() == 1
    stored = table(spark, workbook_run, names.FEATURES_TABLE)
    want = rows_from(features.daily_account_features(raw), touched)
    pd.testing.assert_frame_equal(
        rows_from(stored, touched), want, check_exact=False, rtol=0, atol=1.5e-4
    )
