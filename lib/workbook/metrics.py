"""Metrics for rare positives, computed once in numpy for the model and the baseline alike."""

from __future__ import annotations

import numpy as np


def _sorted(scores: np.ndarray, labels: np.ndarray):
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    s, y = np.asarray(scores, float)[order], np.asarray(labels, int)[order]
    # One point per distinct score: ties move together.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return s[last], tp, fp, int(y.sum()), len(y) - int(y.sum())


def roc_curve(scores, labels):
    """(false positive rate, true positive rate, thresholds), from the strictest threshold."""
    thr, tp, fp, pos, neg = _sorted(scores, labels)
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, thr]


def pr_curve(scores, labels):
    """(recall, precision, thresholds), from the strictest threshold."""
    thr, tp, fp, pos, _ = _sorted(scores, labels)
    precision = tp / (tp + fp)
    return np.r_[0.0, tp / pos], np.r_[precision[0], precision], np.r_[np.inf, thr]


def roc_auc(scores, labels) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def pr_auc(scores, labels) -> float:
    """Area under the precision-recall curve (trapezoidal, as Spark's evaluator computes it)."""
    recall, precision, _ = pr_curve(scores, labels)
    return float(np.trapezoid(precision, recall))


def best_f1_threshold(scores, labels) -> float:
    """The score threshold with the highest F1: the decision rule chosen on training data."""
    recall, precision, thresholds = pr_curve(scores, labels)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[1:][np.argmax(f1[1:])])


def at_threshold(scores, labels, threshold: float) -> dict[str, float | int]:
    """Precision, recall, F1 and the confusion matrix when flagging ``score >= threshold``."""
    flagged = np.asarray(scores, float) >= threshold
    y = np.asarray(labels, int).astype(bool)
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    fn, tn = int((~flagged & y).sum()), int((~flagged & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def evaluate(scores, labels, threshold: float) -> dict[str, float | int]:
    return {
        "roc_auc": roc_auc(scores, labels),
        "pr_auc": pr_auc(scores, labels),
        "threshold": float(threshold),
        **at_threshold(scores, labels, threshold),
    }
