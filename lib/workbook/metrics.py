"""Metrics for rare positives, from scikit-learn, for the model and the baseline alike.

PR-AUC is average precision: the precision at each fraud's rank, averaged over the frauds.
It is what scikit-learn recommends for a precision-recall summary, because the trapezoidal
area (Spark's ``areaUnderPR``) interpolates linearly between points of a curve that is not
linear, and so over-states it when positives are rare.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk


def _arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(scores, float), np.asarray(labels, int)


def roc_curve(scores, labels):
    """(false positive rate, true positive rate, thresholds), from the strictest threshold."""
    s, y = _arrays(scores, labels)
    return sk.roc_curve(y, s, drop_intermediate=False)


def pr_curve(scores, labels):
    """(recall, precision, thresholds), from the strictest threshold.

    The first point, recall 0 and precision 1, has no threshold (nothing is flagged).
    """
    s, y = _arrays(scores, labels)
    precision, recall, thresholds = sk.precision_recall_curve(y, s)
    return recall[::-1], precision[::-1], thresholds[::-1]


def roc_auc(scores, labels) -> float:
    s, y = _arrays(scores, labels)
    return float(sk.roc_auc_score(y, s))


def pr_auc(scores, labels) -> float:
    """Average precision (see the module's note)."""
    s, y = _arrays(scores, labels)
    return float(sk.average_precision_score(y, s))


def best_f1_threshold(scores, labels) -> float:
    """The score threshold with the highest F1: the decision rule chosen on training data.

    Of thresholds with the same F1, the strictest (fewest alerts) wins.
    """
    recall, precision, thresholds = pr_curve(scores, labels)
    recall, precision = recall[1:], precision[1:]  # the points that have a threshold
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(thresholds[np.argmax(f1)])


def at_threshold(scores, labels, threshold: float) -> dict[str, float | int]:
    """Precision, recall, F1 and the confusion matrix when flagging ``score >= threshold``."""
    s, y = _arrays(scores, labels)
    flagged = (s >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in sk.confusion_matrix(y, flagged, labels=[0, 1]).ravel())
    precision, recall, f1, _ = sk.precision_recall_fscore_support(
        y, flagged, average="binary", zero_division=0.0
    )
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
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
