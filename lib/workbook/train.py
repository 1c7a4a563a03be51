"""Training: the point-in-time training set, a time-based split, and the MLlib pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from workbook import lakehouse, metrics, names, scoring
from workbook.features import CATEGORICAL_INPUTS, NUMERIC_INPUTS, transaction_features

SCORE = "prediction_score"
WEIGHT = "class_weight"
METADATA_FILE = "workbook_metadata.json"


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
        WEIGHT,
        F.when(F.col(names.LABEL) == 1, 0.5 / positive_share).otherwise(0.5 / (1 - positive_share)),
    )


def build_pipeline(reg_param: float = 0.001, max_iter: int = 200) -> Pipeline:
    indexed = [f"{c}_index" for c in CATEGORICAL_INPUTS]
    one_hot = [f"{c}_onehot" for c in CATEGORICAL_INPUTS]
    return Pipeline(
        stages=[
            StringIndexer(
                inputCols=list(CATEGORICAL_INPUTS),
                outputCols=indexed,
                handleInvalid="keep",
                stringOrderType="alphabetAsc",
            ),
            OneHotEncoder(inputCols=indexed, outputCols=one_hot, handleInvalid="keep"),
            VectorAssembler(inputCols=[*NUMERIC_INPUTS, *one_hot], outputCol="raw_features"),
            StandardScaler(inputCol="raw_features", outputCol="features", withMean=True),
            LogisticRegression(
                featuresCol="features",
                labelCol=names.LABEL,
                weightCol=WEIGHT,
                regParam=reg_param,
                maxIter=max_iter,
            ),
        ]
    )


def score(model: PipelineModel, data: DataFrame) -> DataFrame:
    """The model's output plus ``prediction_score``, the probability of fraud."""
    return model.transform(data).withColumn(SCORE, vector_to_array("probability")[1])


def scores_and_labels(scored: DataFrame, *columns: str) -> pd.DataFrame:
    return scored.select(SCORE, names.LABEL, *columns).toPandas()


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
    threshold = metrics.best_f1_threshold(train_scored[SCORE], train_scored[names.LABEL])
    amount_threshold = metrics.best_f1_threshold(
        train_scored[names.AMOUNT], train_scored[names.LABEL]
    )
    return Evaluation(
        model=metrics.evaluate(test_scored[SCORE], test_scored[names.LABEL], threshold),
        baseline=metrics.evaluate(
            test_scored[names.AMOUNT], test_scored[names.LABEL], amount_threshold
        ),
        threshold=threshold,
        baseline_threshold=amount_threshold,
    )


def set_threshold(model: PipelineModel, threshold: float) -> PipelineModel:
    """Make the pipeline's ``prediction`` column use the chosen decision threshold."""
    model.stages[-1].setThreshold(threshold)
    return model


def save_model(spark, model: PipelineModel, path: str, metadata: dict) -> None:
    """Save, overwriting any earlier model, with a file that says what it was trained on.

    Beside them goes the model exported for scoring without Spark (``scoring.ARTIFACT_FILE``),
    so the serving path always scores with the pipeline saved here.
    """
    exported = scoring.export_json(model, metadata)  # first: an unexportable model saves nothing
    model.write().overwrite().save(path)
    lakehouse.write_text(
        spark, f"{path}/{METADATA_FILE}", json.dumps(metadata, indent=2, default=str)
    )
    lakehouse.write_text(spark, scoring.artifact_location(path), exported)


def load_model(spark, path: str) -> tuple[PipelineModel, dict]:
    return PipelineModel.load(path), json.loads(
        lakehouse.read_text(spark, f"{path}/{METADATA_FILE}")
    )
