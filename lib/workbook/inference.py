"""Streaming inference: score new raw transactions with the saved pipeline, exactly once."""

from __future__ import annotations

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from workbook import lakehouse, names
from workbook.features import transaction_features
from workbook.train import SCORE, score

PREDICTION_COLUMNS = (
    names.TRANSACTION_ID,
    names.TIMESTAMP,
    names.ACCOUNT_ID,
    names.AMOUNT,
    names.CURRENCY,
    names.TRANSACTION_TYPE,
    "is_fraud_prediction",
    SCORE,
    "inference_timestamp",
)


def predictions(model: PipelineModel, transactions: DataFrame, features: DataFrame) -> DataFrame:
    """The same feature vector as in training (a point-in-time join), scored by ``model``."""
    scored = score(model, transaction_features(transactions, features))
    return scored.select(
        *PREDICTION_COLUMNS[:6],
        F.col("prediction").cast("int").alias("is_fraud_prediction"),
        SCORE,
        F.current_timestamp().alias("inference_timestamp"),
    )


def start_scoring(
    spark: SparkSession,
    model: PipelineModel,
    raw_path: str,
    features_path: str,
    predictions_path: str,
    starting_version: int,
    processing_time: str | None = None,
):
    """Score the raw table's commits from ``starting_version`` on; append to the predictions table.

    With no ``processing_time`` the query drains what is there (AvailableNow) and stops. The
    checkpoint beside the table makes a rerun, or a restart after a crash, add nothing twice.
    """
    checkpoint = lakehouse.checkpoint_of(predictions_path)
    reader = spark.readStream.format("delta")
    # A restart goes on from its checkpoint. Delta would still check the starting version,
    # and refuse it once a rerun of 03 has recorded a version the table has not reached.
    if not lakehouse.exists(spark, f"{checkpoint}/offsets/0"):
        reader = reader.option("startingVersion", starting_version)
    new_transactions = reader.load(raw_path)
    features = spark.read.format("delta").load(features_path)
    writer = (
        predictions(model, new_transactions, features)
        .writeStream.format("delta")
        .outputMode("append")
        .option("checkpointLocation", checkpoint)
        .queryName("score_transactions")
    )
    trigger = {"processingTime": processing_time} if processing_time else {"availableNow": True}
    return writer.trigger(**trigger).start(predictions_path)
