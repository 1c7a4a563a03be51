"""Training: the point-in-time training set, a time-based split, and the MLlib pipeline."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date

import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from workbook import lakehouse, metrics, names
from workbook.features import transaction_features
from workbook.simulator import SimulationConfig

# The tables a model is trained on, each read at one version (Delta time travel).
INPUT_TABLES = (names.RAW_TABLE, names.FEATURES_TABLE, names.LABELS_TABLE)
ROWS_PER_TASK = 1_000_000  # rows of a training task: enough to outweigh a task's fixed cost


def training_set(raw: DataFrame, features: DataFrame, labels: DataFrame) -> DataFrame:
    """Every labelled transaction with its point-in-time model inputs."""
    return transaction_features(raw, features).join(labels, names.TRANSACTION_ID)


def time_split(data: DataFrame, test_from: date) -> tuple[DataFrame, DataFrame]:
    """Train on the days before ``test_from``, test on that day and after: no look-ahead."""
    cutoff = F.lit(test_from).cast("date")
    return data.filter(F.col(names.TRANSACTION_DATE) < cutoff), data.filter(
        F.col(names.TRANSACTION_DATE) >= cutoff
    )


def with_class_weights(train: DataFrame) -> DataFrame:
    """Weight each class by the inverse of its share, so rare fraud counts as much as the rest."""
    positive_share = train.agg(F.avg(names.LABEL)).first()[0]
    return train.withColumn(
        names.CLASS_WEIGHT,
        F.when(F.col(names.LABEL) == 1, 0.5 / positive_share).otherwise(0.5 / (1 - positive_share)),
    )


def fit(pipeline: Pipeline, train: DataFrame) -> PipelineModel:
    """``pipeline`` fitted on ``train``, each class weighted by the inverse of its share.

    The optimizer runs a Spark job per iteration over the rows: in tasks of up to
    ``ROWS_PER_TASK`` rows, not the many small partitions a join leaves, each job costs less
    (at the default size the fit took 3.4 s instead of 5.5 s; benchmarks/README.md).
    """
    tasks = math.ceil(train.count() / ROWS_PER_TASK)
    return pipeline.fit(with_class_weights(train.coalesce(max(1, tasks))))


def build_pipeline(reg_param: float = 0.001, max_iter: int = 200) -> Pipeline:
    indexed = [f"{c}_index" for c in names.CATEGORICAL_INPUTS]
    one_hot = [f"{c}_onehot" for c in names.CATEGORICAL_INPUTS]
    return Pipeline(
        stages=[
            StringIndexer(
                inputCols=list(names.CATEGORICAL_INPUTS),
                outputCols=indexed,
                handleInvalid="keep",
                stringOrderType="alphabetAsc",
            ),
            OneHotEncoder(inputCols=indexed, outputCols=one_hot, handleInvalid="keep"),
            VectorAssembler(inputCols=[*names.NUMERIC_INPUTS, *one_hot], outputCol=names.ASSEMBLED),
            StandardScaler(inputCol=names.ASSEMBLED, outputCol=names.SCALED, withMean=True),
            LogisticRegression(
                featuresCol=names.SCALED,
                labelCol=names.LABEL,
                weightCol=names.CLASS_WEIGHT,
                regParam=reg_param,
                maxIter=max_iter,
            ),
        ]
    )


def score(model: PipelineModel, data: DataFrame) -> DataFrame:
    """The model's output plus ``prediction_score``, the probability of fraud."""
    probability = vector_to_array(names.PROBABILITY)[1]
    return model.transform(data).withColumn(names.PREDICTION_SCORE, probability)


def scores_and_labels(scored: DataFrame, *columns: str) -> pd.DataFrame:
    return scored.select(names.PREDICTION_SCORE, names.LABEL, *columns).toPandas()


@dataclass
class Evaluation:
    model: dict
    baseline: dict
    threshold: float
    baseline_threshold: float


def evaluate(train_scored: pd.DataFrame, test_scored: pd.DataFrame) -> Evaluation:
    """Choose both decision thresholds on training data, then measure on the test days.

    The baseline flags amounts above a threshold: what the model adds is the difference.
    """
    score, label = names.PREDICTION_SCORE, names.LABEL
    threshold = metrics.best_f1_threshold(train_scored[score], train_scored[label])
    amount_threshold = metrics.best_f1_threshold(train_scored[names.AMOUNT], train_scored[label])
    return Evaluation(
        model=metrics.evaluate(test_scored[score], test_scored[label], threshold),
        baseline=metrics.evaluate(test_scored[names.AMOUNT], test_scored[label], amount_threshold),
        threshold=threshold,
        baseline_threshold=amount_threshold,
    )


def read_inputs(spark, versions: dict[str, int]) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The raw, features and labels tables, each as of its version in ``versions``."""
    raw, features, labels = (
        lakehouse.read_table(spark, table, versions[table.name]) for table in INPUT_TABLES
    )
    return raw, features, labels


def model_metadata(
    config: SimulationConfig,
    versions: dict[str, int],
    test_from: date,
    test_days: int,
    evaluation: Evaluation,
) -> dict:
    """What a model was trained on and how it did: saved with it, read by scoring.

    ``versions`` are the input tables' Delta versions by table name, the same in every
    profile, so a model's record does not depend on where the tables live.
    """
    missing = [t.name for t in INPUT_TABLES if t.name not in versions]
    if missing:
        raise ValueError(f"no version recorded for {', '.join(missing)}")
    return {
        "features": {
            "numeric": list(names.NUMERIC_INPUTS),
            "categorical": list(names.CATEGORICAL_INPUTS),
        },
        "table_versions": {t.name: int(versions[t.name]) for t in INPUT_TABLES},
        "simulation": json.loads(config.to_json()),
        "split": {"test_from": str(test_from), "test_days": test_days},
        "threshold": evaluation.threshold,
        "metrics": {"test": evaluation.model, "baseline": evaluation.baseline},
    }


def run_parameters(
    config: SimulationConfig, reg_param: float, max_iter: int, test_days: int
) -> dict:
    """A training run's parameters: the model's, the split's and the simulator's settings."""
    simulation = {f"simulation.{k}": v for k, v in json.loads(config.to_json()).items()}
    return {"reg_param": reg_param, "max_iter": max_iter, "test_days": test_days, **simulation}


def trained_on_version(metadata: dict, table: names.Location = names.RAW_TABLE) -> int:
    """The version of ``table`` a model was trained on: later commits are new to it."""
    return metadata["table_versions"][table.name]


def set_threshold(model: PipelineModel, threshold: float) -> PipelineModel:
    """Make the pipeline's ``prediction`` column use the chosen decision threshold."""
    model.stages[-1].setThreshold(threshold)
    return model
