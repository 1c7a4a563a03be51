"""Monitoring: PSI as its definition gives it, quality per labelled day, idempotent records."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from workbook import lakehouse, metrics, monitoring, names

pytestmark = pytest.mark.spark
DAYS = [dt.date(2025, 2, 1), dt.date(2025, 2, 2)]


def expected_psi(reference: np.ndarray, day: np.ndarray, edges: list[float]) -> float:
    """PSI by its definition, in numpy, with the same bins and floor."""
    bins = len(edges) + 1
    shares = [
        np.bincount(np.searchsorted(edges, v, side="left"), minlength=bins) / len(v)
        for v in (reference, day)
    ]
    ref, now = (np.maximum(s, monitoring.SHARE_FLOOR) for s in shares)
    return float(np.sum((now - ref) * np.log(now / ref)))


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(7)
    return {
        "reference": rng.normal(0, 1, 5000),
        DAYS[0]: rng.normal(0, 1, 3000),  # the same population
        DAYS[1]: rng.normal(1, 1, 3000),  # shifted by one standard deviation
    }


def frame(spark, samples):
    rows = [(day, float(v)) for day in DAYS for v in samples[day]]
    return spark.createDataFrame(pd.DataFrame(rows, columns=[names.MONITORED_DAY, "x"]))


def test_psi_follows_its_definition_and_reads_as_stated(spark, samples):
    reference_df = spark.createDataFrame(pd.DataFrame({"x": samples["reference"]}))
    ref = monitoring.reference(reference_df, ["x"])
    edges = ref.edges["x"]
    assert len(edges) == monitoring.BINS - 1
    assert np.allclose(edges, np.quantile(samples["reference"], np.arange(1, 10) / 10), atol=0.02)
    found = {
        r[names.MONITORED_DAY]: r[names.METRIC_VALUE]
        for r in monitoring.drift(frame(spark, samples), ref).collect()
    }
    for day in DAYS:
        assert found[day] == pytest.approx(
            expected_psi(samples["reference"], samples[day], edges), abs=1e-9
        )
    assert monitoring.reading(found[DAYS[0]]) == "stable"
    assert monitoring.reading(found[DAYS[1]]) == "significant shift"


def test_categories_missing_values_and_empty_bins_count(spark):
    reference_df = spark.createDataFrame(
        pd.DataFrame({"kind": ["a"] * 50 + ["b"] * 50, "n": [0.0] * 90 + [1.0] * 10})
    )
    ref = monitoring.reference(reference_df, ["n"], ["kind"])
    assert ref.edges["n"] == [0.0]  # nine deciles, all zero: bins "0 or less" and "above 0"
    day = spark.createDataFrame(
        pd.DataFrame(
            {
                names.MONITORED_DAY: [DAYS[0]] * 4,
                "kind": ["a", "a", "c", None],  # b vanished, c is new, one missing
                "n": [0.0, 0.0, None, 5.0],
            }
        )
    )
    found = {r[names.METRIC]: r[names.METRIC_VALUE] for r in monitoring.drift(day, ref).collect()}
    floor = monitoring.SHARE_FLOOR

    def term(now, before):
        now, before = max(now, floor), max(before, floor)
        return (now - before) * np.log(now / before)

    kinds = term(0.5, 0.5) + term(0, 0.5) + term(0.25, 0) + term(0.25, 0)
    counts = term(0.5, 0.9) + term(0.25, 0.1) + term(0.25, 0)  # 0, >= 1, missing
    assert found["psi:kind"] == pytest.approx(kinds, abs=1e-9)
    assert found["psi:n"] == pytest.approx(counts, abs=1e-9)


def test_quality_per_labelled_day_matches_the_metrics(spark):
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.1
    scores = np.clip(labels * 0.4 + rng.random(400) * 0.7, 0, 1)
    day = np.where(np.arange(400) < 200, DAYS[0], DAYS[1])
    scored = spark.createDataFrame(
        pd.DataFrame(
            {names.MONITORED_DAY: day, names.PREDICTION_SCORE: scores, names.LABEL: labels * 1}
        )
    )
    found = {
        (r[names.MONITORED_DAY], r[names.METRIC]): r[names.METRIC_VALUE]
        for r in monitoring.quality(scored, threshold=0.5).collect()
    }
    for k, d in enumerate(DAYS):
        part = slice(200 * k, 200 * (k + 1))
        expected = metrics.evaluate(scores[part], labels[part] * 1, 0.5)
        for metric in monitoring.QUALITY_METRICS:
            assert found[(d, metric)] == pytest.approx(expected[metric], abs=1e-12)
    # A day without fraud has no quality to speak of: no rows rather than zeros.
    calm = scored.filter(f"{names.MONITORED_DAY} = '{DAYS[0]}' AND {names.LABEL} = 0")
    assert monitoring.quality(calm, threshold=0.5).count() == 0


def test_monitoring_a_day_again_replaces_its_rows(spark, samples):
    reference_df = spark.createDataFrame(pd.DataFrame({"x": samples["reference"]}))
    results = monitoring.drift(frame(spark, samples), monitoring.reference(reference_df, ["x"]))
    assert monitoring.record(spark, results, "1") == {"inserted": 2, "updated": 0}
    assert monitoring.record(spark, results, "1") == {"inserted": 0, "updated": 0}
    assert monitoring.record(spark, results, "2")["inserted"] == 2  # another version's view
    path = lakehouse.location(names.MONITORING_TABLE)
    unchanged = lakehouse.table_version(spark, path)
    assert monitoring.record(spark, results, "1") == {"inserted": 0, "updated": 0}
    assert lakehouse.table_version(spark, path) == unchanged, "nothing to write: no commit"
    # A value measured again differently (a fixed bug, say) replaces the stored one.
    doubled = results.withColumn(names.METRIC_VALUE, F.col(names.METRIC_VALUE) * 2)
    assert monitoring.record(spark, doubled, "1") == {"inserted": 0, "updated": 2}
    table = lakehouse.read_table(spark, names.MONITORING_TABLE).toPandas()
    assert len(table) == 4
    assert not table.duplicated(list(monitoring.KEYS)).any()
    by_version = table.pivot(
        index=[names.MONITORED_DAY, names.METRIC],
        columns=names.MODEL_VERSION,
        values=names.METRIC_VALUE,
    )
    assert (by_version["1"] == 2 * by_version["2"]).all()


def test_a_reference_is_kept_as_json(spark, samples):
    reference_df = spark.createDataFrame(pd.DataFrame({"x": samples["reference"], "k": "a"}))
    ref = monitoring.reference(reference_df, ["x"], ["k"])
    assert monitoring.Reference.from_json(ref.to_json()) == ref


def test_a_large_reference_takes_its_edges_from_a_sample_of_the_rows_alone(
    spark, samples, monkeypatch
):
    monkeypatch.setattr(monitoring, "QUANTILE_ROWS", 1000)
    values = pd.DataFrame({"x": samples["reference"]})
    one, many = (
        spark.createDataFrame(values).repartition(n, "x").sortWithinPartitions("x") for n in (1, 7)
    )
    edges = [monitoring.reference(f, ["x"]).edges["x"] for f in (one, many)]
    assert edges[0] == edges[1]  # the same rows, partitioned otherwise: the same edges
    exact = np.quantile(samples["reference"], np.arange(1, 10) / 10)
    assert not np.allclose(edges[0], exact, atol=1e-9)  # a sample, not every row
    assert np.allclose(edges[0], exact, atol=0.15)  # of the same distribution
