"""Streaming inference: score new raw transactions with the saved pipeline, exactly once."""

from __future__ import annotations

import contextlib
from functools import partial

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from workbook import lakehouse, lineage, micro_batches, names, registry
from workbook.features import as_of_date, transaction_features
from workbook.spark import interpreted
from workbook.train import score

PREDICTION_COLUMNS = (
    names.TRANSACTION_ID,
    names.TIMESTAMP,
    names.ACCOUNT_ID,
    names.AMOUNT,
    names.CURRENCY,
    names.TRANSACTION_TYPE,
    names.IS_FRAUD_PREDICTION,
    names.PREDICTION_SCORE,
    names.INFERENCE_TIMESTAMP,
    names.MODEL_VERSION,
)
# A live micro-batch (a few thousand rows) is scored and written as one task and one file; a
# backlog is spread over tasks of this many rows.
ROWS_PER_TASK = 100_000


def predictions(
    model: PipelineModel | OneCallPipeline,
    transactions: DataFrame,
    features: DataFrame,
    model_version: str,
) -> DataFrame:
    """The same feature vector as in training (a point-in-time join), scored by ``model``.

    Each row names the registered ``model_version`` that scored it.
    """
    scored = score(model, transaction_features(transactions, features))
    return scored.select(
        *PREDICTION_COLUMNS[:6],
        F.col(names.PREDICTION).cast("int").alias(names.IS_FRAUD_PREDICTION),
        names.PREDICTION_SCORE,
        F.current_timestamp().alias(names.INFERENCE_TIMESTAMP),
        F.lit(str(model_version)).alias(names.MODEL_VERSION),
    )


def start_scoring(
    spark: SparkSession,
    model: PipelineModel,
    model_version: str,
    raw_path: str,
    features_path: str,
    predictions_path: str,
    starting_version: int,
    processing_time: str | None = None,
):
    """Score the raw table's commits from ``starting_version`` on; append to the predictions table.

    ``model_version`` is the registered version of ``model``, recorded in every prediction.

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
    each_batch = partial(
        score_batch,
        OneCallPipeline(model),
        model_version,
        FeatureDays(features_path),
        predictions_path,
    )
    writer = (
        new_transactions.writeStream.foreachBatch(each_batch)
        .option("checkpointLocation", checkpoint)
        .queryName("score_transactions")
    )
    trigger = {"processingTime": processing_time} if processing_time else {"availableNow": True}
    # Spark reports each micro-batch's reads and write; the model is Python's to name.
    read = [lineage.at(raw_path), lineage.at(features_path), registry.as_dataset(model_version)]
    lineage.record("score_transactions", read, [lineage.at(predictions_path)])
    return writer.trigger(**trigger).start()


class OneCallPipeline:
    """A fitted pipeline that each micro-batch applies in one call to the JVM. Through Python,
    each of its five stages first copies all its parameters to its JVM twin: about a hundred
    calls, 20 to 30 ms of a live batch."""

    def __init__(self, model: PipelineModel):
        self._java = model._to_java()

    def transform(self, data: DataFrame) -> DataFrame:
        return DataFrame(self._java.transform(data._jdf), data.sparkSession)


def score_batch(
    model: PipelineModel | OneCallPipeline,
    model_version: str,
    features: FeatureDays,
    predictions_path: str,
    batch: DataFrame,
    batch_id: int,
) -> None:
    """One micro-batch: scored against only the feature days it needs, appended exactly once
    (a batch replayed after a crash between its commit and the checkpoint's is skipped)."""
    session = batch.sparkSession
    if micro_batches.is_committed(session, predictions_path, batch_id):
        return
    rows, days = batch.coalesce(1).agg(F.count(F.lit(1)), F.collect_set(as_of_date())).first()
    # One row per account and day: a day's rows are small enough to send to every task.
    history = F.broadcast(features.of_days(session, days))
    scored = predictions(
        model, batch.coalesce(max(1, rows // ROWS_PER_TASK)), history, model_version
    )
    # A live batch's query is new code each time (its inference time is a constant):
    # compiling it would cost more than evaluating its few thousand rows.
    small = rows <= ROWS_PER_TASK
    with interpreted(session) if small else contextlib.nullcontext():
        micro_batches.append(scored, predictions_path, batch_id)


class FeatureDays:
    """The daily feature rows of some days, kept in memory until the table or the days change.

    Read afresh, they cost each micro-batch two Spark jobs (Delta's file pruning, the scan);
    live traffic needs the same day (yesterday) batch after batch. The table changes only by
    new commits (upserts), so the rows kept are those of one version, read as of that version.
    """

    def __init__(self, path: str):
        self.path = path
        self._key: tuple[int, frozenset] | None = None
        self._rows: DataFrame | None = None

    def of_days(self, spark: SparkSession, days) -> DataFrame:
        key = (lakehouse.table_version(spark, self.path), frozenset(days))
        if key != self._key:
            if self._rows is not None:
                self._rows.unpersist()
            self._rows = (
                spark.read.format("delta")
                .option("versionAsOf", key[0])
                .load(self.path)
                .where(F.col(names.TRANSACTION_DATE).isin(list(days)))
                .cache()
            )
            self._key = key
        return self._rows
