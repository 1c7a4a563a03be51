"""Training: the time split, class weights, the threshold chosen on training data, metadata."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from workbook import lakehouse, metrics, names, train
from workbook.simulator import SimulationConfig

pytestmark = pytest.mark.spark

FIRST_DAY = date(2025, 1, 1)


def labelled_days(spark, days: int = 10, per_day: int = 20):
    """``per_day`` rows a day; every fifth row is fraud."""
    rows = [
        (f"T{d}-{i}", FIRST_DAY + timedelta(days=d), int(i % 5 == 0), float(i))
        for d in range(days)
        for i in range(per_day)
    ]
    schema = f"{names.TRANSACTION_ID} string, {names.TRANSACTION_DATE} date, "
    schema += f"{names.LABEL} int, {names.AMOUNT} double"
    return spark.createDataFrame(rows, schema)


def test_time_split_trains_before_and_tests_from_the_cutoff(spark):
    data = labelled_days(spark)
    cutoff = FIRST_DAY + timedelta(days=7)
    train_df, test_df = train.time_split(data, cutoff)
    train_days = {r[0] for r in train_df.select(names.TRANSACTION_DATE).distinct().collect()}
    test_days = {r[0] for r in test_df.select(names.TRANSACTION_DATE).distinct().collect()}
    assert max(train_days) < cutoff <= min(test_days)
    assert len(train_days) == 7 and len(test_days) == 3
    assert train_df.count() + test_df.count() == data.count()


def test_class_weights_give_each_class_half_the_weight(spark):
    weighted = train.with_class_weights(labelled_days(spark))
    totals = {
        r[names.LABEL]: r["weight"]
        for r in weighted.groupBy(names.LABEL)
        .agg(F.sum(names.CLASS_WEIGHT).alias("weight"))
        .collect()
    }
    n = weighted.count()
    assert totals[0] == pytest.approx(n / 2) and totals[1] == pytest.approx(n / 2)
    fraud, legit = (
        weighted.filter(F.col(names.LABEL) == label).first()[names.CLASS_WEIGHT] for label in (1, 0)
    )
    assert fraud == pytest.approx(4 * legit), "one fraud in five weighs four legit rows"


def scored(scores, labels, amounts) -> pd.DataFrame:
    return pd.DataFrame(
        {names.PREDICTION_SCORE: scores, names.LABEL: labels, names.AMOUNT: amounts}
    )


def test_thresholds_are_chosen_on_training_data_and_measured_on_the_test_days():
    # On the training days 0.6 separates the classes; on the test days 0.3 would.
    train_scored = scored([0.1, 0.5, 0.6, 0.9], [0, 0, 1, 1], [10.0, 20.0, 300.0, 400.0])
    test_scored = scored([0.2, 0.3, 0.4, 0.7], [0, 1, 1, 1], [15.0, 320.0, 350.0, 30.0])
    evaluation = train.evaluate(train_scored, test_scored)
    assert evaluation.threshold == 0.6
    assert evaluation.baseline_threshold == 300.0
    assert evaluation.model == metrics.evaluate(
        test_scored[names.PREDICTION_SCORE], [0, 1, 1, 1], 0.6
    )
    assert (evaluation.model["tp"], evaluation.model["fn"]) == (1, 2)
    assert (evaluation.baseline["tp"], evaluation.baseline["fn"]) == (2, 1)


def an_evaluation() -> train.Evaluation:
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.2).astype(int)
    frame = scored(rng.random(200) + labels, labels, rng.random(200) * 100)
    return train.evaluate(frame, frame)


VERSIONS = {
    names.RAW_TABLE.name: 3,
    names.FEATURES_TABLE.name: 2,
    names.LABELS_TABLE.name: 1,
}


def test_metadata_is_keyed_by_table_name_and_survives_json():
    config = SimulationConfig(n_transactions=1000, days=14, seed=7)
    evaluation = an_evaluation()
    metadata = train.model_metadata(config, VERSIONS, date(2025, 1, 8), 7, evaluation)
    assert metadata["table_versions"] == VERSIONS
    assert train.trained_on_version(metadata) == 3
    assert train.trained_on_version(metadata, names.LABELS_TABLE) == 1
    assert metadata["features"] == {
        "numeric": list(names.NUMERIC_INPUTS),
        "categorical": list(names.CATEGORICAL_INPUTS),
    }
    assert metadata["threshold"] == evaluation.threshold
    assert metadata["split"] == {"test_from": "2025-01-08", "test_days": 7}
    assert metadata["simulation"] == json.loads(config.to_json()), "the simulator's settings"
    assert json.loads(json.dumps(metadata)) == metadata, "plain JSON, as saved"
    assert not any("/" in key for key in metadata["table_versions"]), "no location in the keys"


def test_metadata_refuses_a_missing_table_version():
    config = SimulationConfig(n_transactions=1000, days=14, seed=7)
    partial = {k: v for k, v in VERSIONS.items() if k != names.LABELS_TABLE.name}
    with pytest.raises(ValueError, match=names.LABELS_TABLE.name):
        train.model_metadata(config, partial, date(2025, 1, 8), 7, an_evaluation())


def test_tables_are_read_as_of_the_pinned_version(spark):
    table = names.Location("test-bucket", "versioned")
    path = lakehouse.location(table)
    spark.range(3).write.format("delta").mode("overwrite").save(path)
    spark.range(5).write.format("delta").mode("overwrite").save(path)
    assert lakehouse.table_versions(spark, [table]) == {"versioned": 1}
    assert lakehouse.read_table(spark, table, 0).count() == 3
    assert lakehouse.read_table(spark, table).count() == 5
