"""Scoring without Spark gives Spark's answers: the exported model and the Python inputs."""

from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from workbook import features, inference, ingest, lakehouse, names, scoring, simulator, train
from workbook.simulator import SimulationConfig

pytestmark = pytest.mark.spark

# Small, with enough compromised accounts that both classes are in the training days.
CONFIG = SimulationConfig(
    n_transactions=2400, days=14, n_accounts=60, seed=3, compromised_share=0.5
)
TEST_FROM = date(2025, 1, 11)
UNSEEN = "teleportation"


def to_raw(spark, tx: pd.DataFrame):
    """The transactions as the raw table holds them (ingest.RAW_SCHEMA, real timestamps)."""
    frame = spark.createDataFrame(tx.assign(**{names.BATCH_ID: 0}))
    return frame.select(
        *[
            (
                F.to_timestamp(F.col(f.name), "yyyy-MM-dd'T'HH:mm:ssX")
                if f.name == names.TIMESTAMP
                else F.col(f.name).cast(f.dataType)
            ).alias(f.name)
            for f in ingest.RAW_SCHEMA
        ]
    )


@pytest.fixture(scope="module")
def simulated(spark):
    tx, labels = simulator.simulate(CONFIG)
    raw = to_raw(spark, tx)
    daily = features.daily_account_features(raw).cache()
    return tx, raw, daily, spark.createDataFrame(labels)


@pytest.fixture(scope="module")
def trained(simulated):
    """A pipeline fitted on the first days, its threshold set, and its held-out days."""
    _, raw, daily, labels = simulated
    data = train.training_set(raw, daily, labels).cache()
    train_df, test_df = train.time_split(data, TEST_FROM)
    assert train_df.filter(F.col(names.LABEL) == 1).count() > 5
    model = train.fit(train.build_pipeline(max_iter=30), train_df)
    train.set_threshold(model, 0.62)
    return model, test_df


def test_fit_trains_in_few_tasks_and_learns_what_a_plain_fit_does(simulated):
    _, raw, daily, labels = simulated
    data = train.training_set(raw, daily, labels).repartition(7).cache()
    train_df, _ = train.time_split(data, TEST_FROM)
    pipeline = train.build_pipeline(max_iter=30)
    fitted = train.fit(pipeline, train_df).stages[-1]
    plain = pipeline.fit(train.with_class_weights(train_df)).stages[-1]
    assert fitted.summary.predictions.rdd.getNumPartitions() == 1  # 7 without train.fit
    np.testing.assert_allclose(
        fitted.coefficients.toArray(), plain.coefficients.toArray(), rtol=1e-4, atol=1e-8
    )
    data.unpersist()


def spark_probabilities(model, rows) -> np.ndarray:
    return np.array(
        [
            r[names.PREDICTION_SCORE]
            for r in train.score(model, rows).select(names.PREDICTION_SCORE).collect()
        ]
    )


def test_exported_model_scores_like_spark(trained):
    model, test_df = trained
    exported = scoring.ScoringModel(scoring.export_model(model, {"threshold": 0.62}))
    scored = train.score(model, test_df).orderBy(names.TRANSACTION_ID).toPandas()
    assert len(scored) > 300

    probabilities = exported.probabilities(scored)
    assert np.max(np.abs(probabilities - scored[names.PREDICTION_SCORE].to_numpy())) < 1e-6
    # Spark's prediction column flags probability > threshold; equal only on exact ties.
    assert ((probabilities > exported.threshold) == (scored["prediction"] == 1)).all()
    assert exported.threshold == 0.62
    assert 0 < (probabilities >= exported.threshold).sum() < len(scored)


def test_unknown_and_missing_categories_follow_handle_invalid(spark, trained):
    model, test_df = trained
    base = test_df.limit(4).toPandas()
    odd = base.copy()
    odd[names.CATEGORY] = [UNSEEN, None, "retail", UNSEEN]
    odd[names.TRANSACTION_TYPE] = ["purchase", UNSEEN, None, None]
    rows = spark.createDataFrame(odd, schema=test_df.schema)
    exported = scoring.ScoringModel(scoring.export_model(model))
    expected = spark_probabilities(model, rows)
    assert np.max(np.abs(exported.probabilities(odd) - expected)) < 1e-6
    # "keep" gives unseen and null values the indexer's extra index, a slot of its own.
    assert exported.probabilities(odd.iloc[[0]]) != exported.probabilities(base.iloc[[0]])

    # Under "error", both refuse the unseen value.
    indexer = model.stages[0]
    with pytest.raises(Exception, match="(?i)unseen"):
        indexer.copy({indexer.handleInvalid: "error"}).transform(rows).collect()
    artifact = scoring.export_model(model)
    for step in artifact["indexers"]:
        step["handle_invalid"] = "error"
    with pytest.raises(scoring.UnknownCategoryError, match=UNSEEN):
        scoring.ScoringModel(artifact).probabilities(odd)


def test_threshold_must_match_the_model(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="set_threshold"):
        scoring.export_model(model, {"threshold": 0.5})


# -- the transaction's inputs ------------------------------------------------------------------


def online_row(daily_row: dict) -> dict:
    """A daily feature row as the online store holds it."""
    row = dict(daily_row)
    row[names.FEATURE_DATE] = row.pop(names.TRANSACTION_DATE)
    return row


def test_python_inputs_equal_spark_transaction_features(simulated):
    tx, raw, daily, _ = simulated
    spark_rows = (
        features.transaction_features(raw, daily).toPandas().set_index(names.TRANSACTION_ID)
    )
    history = {
        (r[names.ACCOUNT_ID], r[names.TRANSACTION_DATE]): online_row(r)
        for r in daily.toPandas().to_dict("records")
    }
    statuses = []
    for event in tx.to_dict("records"):
        day = pd.Timestamp(event[names.TIMESTAMP]).date()
        row = history.get((event[names.ACCOUNT_ID], day - timedelta(days=1)))
        statuses.append(scoring.history_status(event[names.TIMESTAMP], row))
        got = scoring.transaction_inputs(event, row)
        want = spark_rows.loc[event[names.TRANSACTION_ID], list(names.NUMERIC_INPUTS)]
        assert list(got) == list(names.NUMERIC_INPUTS)
        assert np.allclose(list(got.values()), want.to_numpy(float), rtol=0, atol=1e-12), (
            event[names.TRANSACTION_ID],
            got,
            want.to_dict(),
        )
    # Both kinds occur: transactions with a previous-day row and first-day ones without.
    assert statuses.count(scoring.PREVIOUS_DAY) > len(tx) // 2
    assert statuses.count(scoring.UNKNOWN_ACCOUNT) > 0


def test_only_the_previous_day_row_is_used():
    event = {names.TIMESTAMP: "2025-01-10T03:30:00Z", names.AMOUNT: 120.0}
    row = {
        names.ACCOUNT_ID: "ACC000001",
        "daily_transaction_count": 3,
        "txn_count_7d": 9,
        "amount_sum_7d": 300.0,
        "amount_max_7d": 80.0,
        "night_share_7d": 0.25,
        "txn_count_30d": 20,
        "amount_avg_30d": None,  # an empty 30-day window: the amount itself is typical
    }
    neutral = scoring.transaction_inputs(event, None)
    assert neutral["amount_vs_30d_avg"] == 0.0
    assert neutral["is_night"] == 1.0
    assert neutral["txn_count_7d"] == 0.0

    fresh = {**row, names.FEATURE_DATE: date(2025, 1, 9)}
    assert scoring.history_status(event[names.TIMESTAMP], fresh) == scoring.PREVIOUS_DAY
    assert scoring.transaction_inputs(event, fresh)["txn_count_7d"] == 9.0
    assert scoring.transaction_inputs(event, fresh)["amount_vs_30d_avg"] == 0.0

    stale = {**row, names.FEATURE_DATE: date(2025, 1, 7)}
    assert scoring.history_status(event[names.TIMESTAMP], stale) == scoring.STALE
    assert scoring.transaction_inputs(event, stale) == neutral

    for too_new in (date(2025, 1, 10), date(2025, 1, 12)):
        with pytest.raises(scoring.PointInTimeError):
            scoring.transaction_inputs(event, {**row, names.FEATURE_DATE: too_new})

    # The day boundary is UTC: 00:30 in Berlin is still the 9th in UTC.
    berlin = {**event, names.TIMESTAMP: "2025-01-10T00:30:00+01:00"}
    assert scoring.history_status(berlin[names.TIMESTAMP], stale) == scoring.STALE
    assert (
        scoring.transaction_inputs(berlin, {**row, names.FEATURE_DATE: date(2025, 1, 8)})[
            "txn_count_7d"
        ]
        == 9.0
    )


def test_online_path_scores_like_the_streaming_path(spark, simulated, trained):
    """A day's transactions, scored from each account's latest online row, as 04 scores them."""
    tx, _, _, _ = simulated
    model, _ = trained
    last_day = pd.to_datetime(tx[names.TIMESTAMP]).dt.date.max()
    day = pd.to_datetime(tx[names.TIMESTAMP]).dt.date
    history = features.daily_account_features(to_raw(spark, tx[day < last_day]))
    todays = to_raw(spark, tx[day == last_day])
    expected = (
        train.score(model, features.transaction_features(todays, history))
        .select(names.TRANSACTION_ID, names.PREDICTION_SCORE)
        .toPandas()
        .set_index(names.TRANSACTION_ID)[names.PREDICTION_SCORE]
    )
    online = {
        r[names.ACCOUNT_ID]: online_row(r)
        for r in features.latest_per_account(history).toPandas().to_dict("records")
    }
    exported = scoring.ScoringModel(scoring.export_model(model))
    events = tx[day == last_day].to_dict("records")
    assert len(events) > 50
    for event in events:
        got = scoring.score_transaction(exported, event, online.get(event[names.ACCOUNT_ID]))
        assert abs(got["fraud_probability"] - expected[event[names.TRANSACTION_ID]]) < 1e-6
        assert got["history"] in (scoring.PREVIOUS_DAY, scoring.UNKNOWN_ACCOUNT)


# -- the scoring query -------------------------------------------------------------------------


def wait_for_rows(spark, query, path: str, rows: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        assert query.isActive, f"the query stopped: {query.exception()}"
        if lakehouse.is_delta_table(spark, path):
            count = spark.read.format("delta").load(path).count()
            if count >= rows:
                return count
        time.sleep(0.5)
    return count


def test_a_live_query_scores_each_new_transaction_once_as_batch_scoring_does(
    spark, simulated, trained, tmp_path
):
    """Days appended one by one while a query with a processing-time trigger runs."""
    _, raw, daily, _ = simulated
    model, _ = trained
    raw_path, features_path, predictions_path = (
        str(tmp_path / name) for name in ("raw", "features", "predictions")
    )
    day = F.to_date(names.TIMESTAMP)
    last_days = [TEST_FROM + timedelta(days=k) for k in range(3)]
    daily.write.format("delta").partitionBy(names.TRANSACTION_DATE).save(features_path)
    raw.filter(day < last_days[0]).write.format("delta").save(raw_path)

    append = raw.filter(day == last_days[0]).write.format("delta").mode("append")
    append.save(raw_path)  # version 1, where scoring starts

    query = inference.start_scoring(
        spark, model, "v1", raw_path, features_path, predictions_path, 1, processing_time="1 second"
    )
    try:
        for new_day in last_days[1:]:
            time.sleep(1.5)
            raw.filter(day == new_day).write.format("delta").mode("append").save(raw_path)
        new = raw.filter(day.between(last_days[0], last_days[-1]))
        assert wait_for_rows(spark, query, predictions_path, new.count()) == new.count()
    finally:
        query.stop()

    got = spark.read.format("delta").load(predictions_path).toPandas()
    assert got[names.TRANSACTION_ID].is_unique
    assert sum(p["numInputRows"] > 0 for p in query.recentProgress) >= 2  # batch after batch
    expected = inference.predictions(model, new, daily, "v1").toPandas()
    assert (got[names.MODEL_VERSION] == "v1").all(), "each prediction names its model version"
    both = got.merge(expected, on=names.TRANSACTION_ID, suffixes=("", "_batch"))
    assert len(both) == len(expected) == len(got)
    assert np.allclose(
        both[names.PREDICTION_SCORE], both[f"{names.PREDICTION_SCORE}_batch"], rtol=0, atol=1e-12
    )


def test_feature_days_are_read_again_when_the_table_changes(spark, simulated, tmp_path):
    _, _, daily, _ = simulated
    path = str(tmp_path / "features")
    daily.write.format("delta").partitionBy(names.TRANSACTION_DATE).save(path)
    days = inference.FeatureDays(path)
    one_day = [TEST_FROM]

    first = days.of_days(spark, one_day)
    assert days.of_days(spark, one_day) is first  # unchanged table, same days: kept
    assert {r[0] for r in first.select(names.TRANSACTION_DATE).distinct().collect()} == {TEST_FROM}

    two_days = days.of_days(spark, [TEST_FROM, TEST_FROM - timedelta(days=1)])
    assert two_days.count() > first.count()

    changed = daily.withColumn("txn_count_7d", F.lit(-1).cast("bigint"))
    lakehouse.upsert(spark, path, changed, list(names.FEATURE_KEYS))
    history = lakehouse.history(spark, path).collect()
    assert lakehouse.table_version(spark, path) == max(r["version"] for r in history) == 1
    fresh = days.of_days(spark, one_day)
    assert fresh.agg(F.max("txn_count_7d")).first()[0] == -1
