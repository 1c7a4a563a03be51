"""Reproduce a logged training run: the same table versions and parameters, the same model.

A run records the Delta version of every table it read and its parameters. Delta's time
travel reads those versions again, however the tables changed since, so training once more
gives the same coefficients and metrics. A version that has been vacuumed away cannot be
read: that is said plainly, with the table and the version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from workbook import features, lakehouse, names, registry, train
from workbook.simulator import SimulationConfig


class ReproductionError(RuntimeError):
    """A logged run's inputs can no longer be read as they were."""


@dataclass
class Reproduction:
    model: object  # the PipelineModel, trained again
    evaluation: train.Evaluation
    metadata: dict  # the run's record, as logged


def fit(spark, versions: dict[str, int], config: SimulationConfig, parameters: dict):
    """Train and evaluate as notebook 03 does: ``(model, evaluation, train_df, test_df)``."""
    raw, daily, labels = _read(spark, versions)
    data = train.training_set(features.in_period(raw, config), daily, labels).cache()
    test_from = config.end_date - timedelta(days=int(parameters["test_days"]) - 1)
    train_df, test_df = train.time_split(data, test_from)
    pipeline = train.build_pipeline(
        reg_param=float(parameters["reg_param"]), max_iter=int(parameters["max_iter"])
    )
    model = train.fit(pipeline, train_df)
    evaluation = train.evaluate(
        train.scores_and_labels(train.score(model, train_df), names.AMOUNT),
        train.scores_and_labels(train.score(model, test_df), names.AMOUNT),
    )
    train.set_threshold(model, evaluation.threshold)
    return model, evaluation, train_df, test_df


def reproduce(spark, run_id: str) -> Reproduction:
    """Train again from the run's recorded table versions and parameters."""
    recorded = registry.client().get_run(run_id)
    metadata = registry.run_metadata(run_id)
    config = SimulationConfig.from_json(json.dumps(metadata["simulation"]))
    model, evaluation, _, _ = fit(spark, metadata["table_versions"], config, recorded.data.params)
    return Reproduction(model, evaluation, metadata)


def _read(spark, versions: dict[str, int]):
    """The input tables at their versions; a version whose files are gone is named."""
    frames = train.read_inputs(spark, versions)
    for table, frame in zip(train.INPUT_TABLES, frames, strict=True):
        # The log still lists a vacuumed version's files; the files themselves are gone.
        missing = [f for f in frame.inputFiles() if not lakehouse.exists(spark, f)]
        if missing:
            raise ReproductionError(
                f"cannot read {table.name} at version {versions[table.name]}: "
                f"{len(missing)} of its files are gone (vacuumed or deleted), e.g. "
                f"{lakehouse.shown(missing[0])}, so the run cannot be reproduced"
            )
    return frames
