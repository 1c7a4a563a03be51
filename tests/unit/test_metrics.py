"""Metrics against brute-force definitions on random data."""

import numpy as np
import pytest

from workbook import metrics


def pairwise_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_pairwise_probability(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.1).astype(int)
    scores = np.round(rng.random(400) + labels * 0.3, 2)  # rounding makes ties
    assert metrics.roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels))


def test_perfect_and_inverted_scores():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = labels + 0.1 * np.arange(6)
    assert metrics.roc_auc(scores, labels) == 1.0
    assert metrics.pr_auc(scores, labels) == 1.0
    assert metrics.roc_auc(-scores, labels) == 0.0


def test_at_threshold_confusion_matrix():
    result = metrics.at_threshold([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], 0.5)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (1, 1, 1, 1)
    assert result["precision"] == 0.5 and result["recall"] == 0.5


def test_best_f1_threshold_separates_when_possible():
    scores = np.array([0.1, 0.2, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 1, 1, 1])
    threshold = metrics.best_f1_threshold(scores, labels)
    assert metrics.at_threshold(scores, labels, threshold)["f1"] == 1.0


def brute_force_average_precision(scores, labels):
    """The precision at the rank of each positive, averaged over the positives (no ties)."""
    ranked = np.asarray(labels)[np.argsort(-np.asarray(scores))]
    hits = np.cumsum(ranked)
    return np.mean([hits[k] / (k + 1) for k in np.flatnonzero(ranked)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_auc_is_average_precision(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.1).astype(int)
    scores = rng.random(300) + labels * 0.4  # continuous: no ties
    expected = brute_force_average_precision(scores, labels)
    assert metrics.pr_auc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_pr_curve_runs_from_the_strictest_threshold():
    recall, precision, thresholds = metrics.pr_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    assert (recall[0], precision[0]) == (0.0, 1.0), "nothing flagged yet"
    assert list(thresholds) == [0.9, 0.8, 0.3, 0.1]
    assert list(recall[1:]) == [0.5, 0.5, 1.0, 1.0]


def test_of_equal_f1_the_strictest_threshold_wins():
    # Flagging {0.9} and flagging all four both give F1 = 2/3; fewer alerts win.
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1, 0, 0, 1])
    assert metrics.at_threshold(scores, labels, 0.9)["f1"] == pytest.approx(2 / 3)
    assert metrics.at_threshold(scores, labels, 0.6)["f1"] == pytest.approx(2 / 3)
    assert metrics.best_f1_threshold(scores, labels) == 0.9


@pytest.mark.spark
def test_roc_auc_equals_spark_evaluator(spark):
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    rng = np.random.default_rng(3)
    labels = (rng.random(2000) < 0.05).astype(float)
    scores = np.round(rng.random(2000) + labels * 0.5, 3)  # ties, as real scores have
    frame = spark.createDataFrame(
        [(float(s), float(y)) for s, y in zip(scores, labels, strict=True)],
        "score double, y double",
    )
    # numBins=0: Spark's exact curve (by default it down-samples to 1,000 points).
    evaluator = BinaryClassificationEvaluator(
        rawPredictionCol="score", labelCol="y", metricName="areaUnderROC", numBins=0
    )
    assert metrics.roc_auc(scores, labels) == pytest.approx(evaluator.evaluate(frame), abs=1e-12)
