"""Champion and challenger: whether a new model version takes over, and why.

A version is compared with the champion on the same labelled days, which neither was
trained on, by PR-AUC (the metric that suits rare positives). The alias moves last, once
the version is registered whole, so a consumer never loads a half-written model.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbook import metrics, names, registry, train


@dataclass(frozen=True)
class Decision:
    promoted: bool
    champion: str  # the version that carries the alias afterwards
    reason: str  # in words a person can read


def consider(spark, candidate, candidate_pr_auc: float, test_df, margin: float = 0.0) -> Decision:
    """Make ``candidate`` the champion if there is none, or if it is at least as good.

    "At least as good": its PR-AUC on ``test_df`` reaches the champion's on the same rows
    plus ``margin`` (0 when 03 trains again; a retrain may ask for more).
    """
    candidate = str(candidate.version)
    try:
        current = registry.alias_version(names.CHAMPION)
    except registry.AliasNotFoundError:
        registry.set_alias(names.CHAMPION, candidate)
        return Decision(True, candidate, f"version {candidate} is the first champion")
    if str(current.version) == candidate:
        return Decision(False, candidate, f"version {candidate} is the champion already")
    champion_model, _ = registry.load_spark_model(spark, version=current.version)
    scored = train.scores_and_labels(train.score(champion_model, test_df))
    champion_pr_auc = metrics.pr_auc(scored[names.PREDICTION_SCORE], scored[names.LABEL])
    comparison = (
        f"PR-AUC {candidate_pr_auc:.3f} for version {candidate} against {champion_pr_auc:.3f} "
        f"for the champion, version {current.version}, on the same {len(scored):,} transactions"
    )
    if candidate_pr_auc >= champion_pr_auc + margin:
        registry.set_alias(names.CHAMPION, candidate)
        return Decision(True, candidate, f"promoted: {comparison}")
    return Decision(False, str(current.version), f"kept the champion: {comparison}")
