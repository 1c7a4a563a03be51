"""The daily step, run for a few days after the workbook: every table kept up, nothing twice.

Labels arrive one day late here (three by default), so that quality is measured within the
few days the test runs; the drift scenario starts on the first day of the loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from pyspark.sql import functions as F

from workbook import names

pytestmark = pytest.mark.spark

LOOP_DAYS, LABEL_DELAY = 3, 1
RERUN = """
import sys
from datetime import date
from workbook import lakehouse, loop
from workbook.spark import get_spark
spark = get_spark("loop-rerun")
day, delay, drift_from = (date.fromisoformat(sys.argv[1]), int(sys.argv[2]),
                          date.fromisoformat(sys.argv[3]))
drift = loop.DriftScenario(lakehouse.load_simulation(spark).index_of(drift_from))
settings = loop.LoopSettings(label_delay_days=delay, drift=drift)
print(loop.run_day(spark, day, settings).to_json())
"""


def table(spark, workbook_run, location: names.Location):
    return spark.read.format("delta").load(
        str(workbook_run.lakehouse / location.bucket / location.name)
    )


def run(workbook_run, *args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, *args],
        env=workbook_run.environment(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def days(spark, workbook_run) -> list[dict]:
    raw = table(spark, workbook_run, names.RAW_TABLE)
    first = raw.agg(F.max(F.to_date(names.TIMESTAMP))).first()[0] + timedelta(days=1)
    args = ["--days", str(LOOP_DAYS), "--label-delay", str(LABEL_DELAY)]
    args += ["--drift-from", str(first)]
    return run(workbook_run, "-m", "workbook.loop", *args)


def test_each_day_is_ingested_featured_scored_and_served(spark, workbook_run, days):
    assert len(days) == LOOP_DAYS
    assert [len(d["feature_days"]) for d in days] == [2, 1, 1], "04's day is caught up first"
    assert all(d["predictions"] > 0 and d["events"]["valid_events"] > 0 for d in days)
    raw = table(spark, workbook_run, names.RAW_TABLE)
    keys = raw.select(names.ACCOUNT_ID, F.to_date(names.TIMESTAMP).alias(names.TRANSACTION_DATE))
    curated = table(spark, workbook_run, names.FEATURES_TABLE)
    assert keys.join(curated, list(names.FEATURE_KEYS), "left_anti").count() == 0
    predictions = table(spark, workbook_run, names.PREDICTIONS_TABLE)
    assert predictions.count() == predictions.select(names.TRANSACTION_ID).distinct().count()
    assert days[-1]["online"]["inserted"] + days[-1]["online"]["updated"] > 0


def test_labels_arrive_late_and_each_day_is_monitored(spark, workbook_run, days):
    assert [d["labels_of"] for d in days[LABEL_DELAY:]] == [d["day"] for d in days[:-LABEL_DELAY]]
    monitored = table(spark, workbook_run, names.MONITORING_TABLE)
    by_day = {
        str(r[0]): r[1]
        for r in monitored.groupBy(names.MONITORED_DAY).agg(F.collect_set(names.METRIC)).collect()
    }
    psi = {f"psi:{c}" for c in (*names.NUMERIC_INPUTS, names.PREDICTION_SCORE)}
    for d in days:
        assert psi <= set(by_day[d["day"]]), d["day"]
    raw = table(spark, workbook_run, names.RAW_TABLE)
    labels = table(spark, workbook_run, names.LABELS_TABLE)
    for d in days:
        of_day = raw.filter(F.to_date(names.TIMESTAMP) == F.lit(d["day"]))
        labelled = of_day.join(labels, names.TRANSACTION_ID)
        if d is days[-1]:
            assert labelled.count() == 0, "the last day's labels are still to come"
            continue
        assert labelled.count() == of_day.count()
        # Quality is measured on a labelled day with fraud (it is undefined without).
        has_fraud = labelled.filter(F.col(names.LABEL) == 1).count() > 0
        assert ({"precision", "recall", "pr_auc"} <= set(by_day[d["day"]])) == has_fraud


def test_every_decision_is_recorded_with_its_reason(spark, workbook_run, days):
    decisions = table(spark, workbook_run, names.DECISIONS_TABLE).orderBy(names.MONITORED_DAY)
    rows = decisions.collect()
    assert [str(r[names.MONITORED_DAY]) for r in rows] == [d["day"] for d in days]
    assert all(r["reason"].startswith(("keep", "train")) for r in rows)
    for row, day in zip(rows, days, strict=True):
        assert (
            row["retrain"] == day["retrain"] and (row["challenger"] is not None) == day["retrain"]
        )


def test_a_day_run_again_changes_nothing(spark, workbook_run, days):
    tables = (names.RAW_TABLE, names.FEATURES_TABLE, names.PREDICTIONS_TABLE)
    tables += (names.MONITORING_TABLE, names.DECISIONS_TABLE, names.LABELS_TABLE)
    before = {t.name: table(spark, workbook_run, t).count() for t in tables}
    again = run(workbook_run, "-c", RERUN, days[-1]["day"], str(LABEL_DELAY), days[0]["day"])[0]
    assert {t.name: table(spark, workbook_run, t).count() for t in tables} == before
    assert again["feature_days"] == [] and again["predictions"] == days[-1]["predictions"]
    assert again["online"]["inserted"] == again["online"]["updated"] == 0
