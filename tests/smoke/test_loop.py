"""The short loop of the smoke run (06): every table kept up each day, nothing twice.

Labels arrive one day late here (three by default), so that quality is measured within the
few days the loop runs; the drift starts on its first day. 06 itself checks that running
its last day again changes no table.
"""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from quick_workbook import LABEL_DELAY, LOOP_DAYS

from workbook import names

pytestmark = pytest.mark.spark


def table(spark, workbook_run, location: names.Location):
    return spark.read.format("delta").load(
        str(workbook_run.lakehouse / location.bucket / location.name)
    )


@pytest.fixture(scope="module")
def decisions(spark, workbook_run) -> list:
    return table(spark, workbook_run, names.DECISIONS_TABLE).orderBy(names.MONITORED_DAY).collect()


@pytest.fixture(scope="module")
def days(decisions) -> list:
    return [row[names.MONITORED_DAY] for row in decisions]


def of_day(frame, day):
    return frame.filter(F.to_date(names.TIMESTAMP) == F.lit(day))


def test_each_day_is_ingested_featured_and_scored_once(spark, workbook_run, days):
    assert len(days) == LOOP_DAYS
    raw = table(spark, workbook_run, names.RAW_TABLE)
    assert all(of_day(raw, day).count() > 0 for day in days)
    keys = raw.select(names.ACCOUNT_ID, F.to_date(names.TIMESTAMP).alias(names.TRANSACTION_DATE))
    curated = table(spark, workbook_run, names.FEATURES_TABLE)
    assert keys.join(curated, list(names.FEATURE_KEYS), "left_anti").count() == 0
    predictions = table(spark, workbook_run, names.PREDICTIONS_TABLE)
    assert predictions.count() == predictions.select(names.TRANSACTION_ID).distinct().count()
    for day in days:
        assert (
            of_day(raw, day)
            .join(of_day(predictions, day), names.TRANSACTION_ID, "left_anti")
            .count()
            == 0
        )


def test_labels_arrive_late_and_each_day_is_monitored(spark, workbook_run, days):
    monitored = table(spark, workbook_run, names.MONITORING_TABLE)
    by_day = {
        r[0]: r[1]
        for r in monitored.groupBy(names.MONITORED_DAY).agg(F.collect_set(names.METRIC)).collect()
    }
    psi = {f"psi:{c}" for c in (*names.NUMERIC_INPUTS, names.PREDICTION_SCORE)}
    assert all(psi <= set(by_day[day]) for day in days)
    raw = table(spark, workbook_run, names.RAW_TABLE)
    labels = table(spark, workbook_run, names.LABELS_TABLE)
    for day in days:
        labelled = of_day(raw, day).join(labels, names.TRANSACTION_ID)
        if day in days[-LABEL_DELAY:]:
            assert labelled.count() == 0, "the last days' labels are still to come"
            continue
        assert labelled.count() == of_day(raw, day).count()
        # Quality is measured on a labelled day with fraud (it is undefined without).
        has_fraud = labelled.filter(F.col(names.LABEL) == 1).count() > 0
        assert ({"precision", "recall", "pr_auc"} <= set(by_day[day])) == has_fraud


def test_every_decision_is_recorded_with_its_reason(spark, workbook_run, decisions):
    for row in decisions:
        assert row["reason"].startswith(("keep", "train")), row["reason"]
        assert row["retrain"] == (row["challenger"] is not None) or (
            row["retrain"] and "none could be trained" in row["reason"]
        )
        assert row["retrain"] == row["reason"].startswith("train")
    predictions = table(spark, workbook_run, names.PREDICTIONS_TABLE)
    for row in decisions:
        versions = of_day(predictions, row[names.MONITORED_DAY]).select(names.MODEL_VERSION)
        assert {r[0] for r in versions.distinct().collect()} == {row["champion_before"]}


def test_the_summary_reports_the_loop(workbook_run, days):
    monitoring = workbook_run.summary["monitoring"]
    assert monitoring["first_champion"] and monitoring["days"] == [str(d) for d in days]
