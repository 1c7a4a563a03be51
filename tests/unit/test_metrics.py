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
