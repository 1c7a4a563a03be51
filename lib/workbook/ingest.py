"""Ingestion: parse landed events, validate them, and write raw and quarantine Delta tables.

Events arrive as text (a JSON line from a file, or a Kafka message value). Parsing and
validation are the same for every source: each event ends in the raw table exactly once,
or in the quarantine table with the reason it was refused.
"""

from __future__ import annotations

import json
from functools import partial

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from workbook import lakehouse, names, sources
from workbook.contract import (
    EVENT_FIELDS,
    KNOWN_CURRENCIES,
    MAX_AMOUNT,
    MAX_EVENT_BYTES,
    REQUIRED_FIELDS,
)
from workbook.lakehouse import ensure_table, merge_new_rows

TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XXX"

# Every field is read as text first, so a wrong type is reported as such, not nulled.
CORRUPT = "_corrupt_record"
TEXT_SCHEMA = T.StructType([T.StructField(f, T.StringType()) for f in (*EVENT_FIELDS, CORRUPT)])
RAW_SCHEMA = T.StructType(
    [
        T.StructField(names.TRANSACTION_ID, T.StringType(), False),
        T.StructField(names.TIMESTAMP, T.TimestampType(), False),
        T.StructField(names.ACCOUNT_ID, T.StringType(), False),
        T.StructField(names.AMOUNT, T.DoubleType(), False),
        T.StructField(names.CURRENCY, T.StringType(), False),
        T.StructField(names.TRANSACTION_TYPE, T.StringType()),
        T.StructField(names.MERCHANT_ID, T.StringType()),
        T.StructField(names.CATEGORY, T.StringType()),
        T.StructField(names.IS_FLAGGED, T.BooleanType()),
        T.StructField(names.BATCH_ID, T.LongType(), False),
    ]
)
QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField(names.RECORD_ID, T.StringType(), False),
        T.StructField(names.REASON, T.StringType(), False),
        T.StructField(names.TRANSACTION_ID, T.StringType()),
        T.StructField(names.RAW_VALUE, T.StringType()),
        T.StructField(names.BATCH_ID, T.LongType(), False),
    ]
)
LABELS_SCHEMA = T.StructType(
    [
        T.StructField(names.TRANSACTION_ID, T.StringType(), False),
        T.StructField(names.LABEL, T.IntegerType(), False),
    ]
)


def _first_failure(rules: list[tuple[str, Column]]) -> Column:
    """The reason of the first rule that fails, or null when every rule holds."""
    reason = F.lit(None).cast("string")
    for name, failed in reversed(rules):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
    return reason


def parse_and_validate(events: DataFrame) -> DataFrame:
    """Typed event columns, ``record_id`` and ``reason`` (null for a valid event) from ``value``."""
    text = F.col(names.VALUE)
    # `inline` parses each event once; a plain select of "e.*" would be collapsed by the
    # optimizer into one JSON parse per field.
    parsed = events.select(
        text,
        F.sha2(text, 256).alias(names.RECORD_ID),
        F.inline(F.array(F.from_json(text, TEXT_SCHEMA, {"columnNameOfCorruptRecord": CORRUPT}))),
    )
    # Typed once, in their own projection, so that every rule reads the same parsed value.
    typed = parsed.select(
        "*",
        # NaN and Infinity tokens come back quoted; unquote them so the amount rule sees them.
        F.regexp_replace(names.AMOUNT, '"', "").try_cast("double").alias("_amount"),
        F.col(names.IS_FLAGGED).try_cast("boolean").alias("_flagged"),
        F.try_to_timestamp(names.TIMESTAMP, F.lit(TIMESTAMP_FORMAT)).alias("_timestamp"),
    )
    amount, flagged, timestamp = F.col("_amount"), F.col("_flagged"), F.col("_timestamp")
    rules = [
        ("oversized_event", F.octet_length(text) > MAX_EVENT_BYTES),
        # The file source and the Kafka value's cast keep bytes that are not UTF-8 as they
        # are; parsed, they would pass as altered text (U+FFFD), so they are refused here.
        ("invalid_encoding", ~F.is_valid_utf8(text)),
        ("malformed_json", F.col(CORRUPT).isNotNull()),
        ("missing_required_field", F.greatest(*[F.col(f).isNull() for f in REQUIRED_FIELDS])),
        ("wrong_type", amount.isNull() | (F.col(names.IS_FLAGGED).isNotNull() & flagged.isNull())),
        (
            "invalid_amount",
            F.isnan(amount)
            | (amount <= 0)
            | (F.abs(amount) == float("inf"))
            | (amount > MAX_AMOUNT),
        ),
        ("unknown_currency", ~F.col(names.CURRENCY).isin(*KNOWN_CURRENCIES)),
        ("invalid_timestamp", timestamp.isNull()),
        ("future_timestamp", timestamp > F.current_timestamp()),
    ]
    as_typed = {names.AMOUNT: amount, names.IS_FLAGGED: flagged, names.TIMESTAMP: timestamp}
    return typed.select(
        names.VALUE,
        names.RECORD_ID,
        *[as_typed.get(f, F.col(f)).alias(f) for f in EVENT_FIELDS],
        _first_failure(rules).alias(names.REASON),
    )


def mark_duplicates(checked: DataFrame, existing_ids: DataFrame, batch_id: int) -> DataFrame:
    """Refuse a valid event whose transaction_id came earlier in the batch or in an earlier batch.

    ``existing_ids`` holds the raw table's (transaction_id, ingest_batch_id); rows written by
    this same batch id are a retry of this batch, not duplicates.
    """
    # Rank valid rows among themselves: a refused copy must not push the valid one out.
    first = Window.partitionBy(names.TRANSACTION_ID, F.col(names.REASON).isNull()).orderBy(
        names.RECORD_ID
    )
    earlier = existing_ids.filter(F.col(names.BATCH_ID) != batch_id).select(
        names.TRANSACTION_ID, F.lit(True).alias("_seen")
    )
    ranked = checked.withColumn(
        "_rank", F.when(F.col(names.REASON).isNull(), F.row_number().over(first))
    ).join(earlier, names.TRANSACTION_ID, "left")
    duplicate = (F.col("_rank") > 1) | F.col("_seen").isNotNull()
    return ranked.withColumn(
        names.REASON,
        F.coalesce(F.col(names.REASON), F.when(duplicate, F.lit("duplicate_transaction_id"))),
    ).drop("_rank", "_seen")


def append_once(rows: DataFrame, path: str, app_id: str, batch_id: int) -> None:
    """Append a micro-batch's rows; Delta skips the write if this batch was committed before."""
    (
        rows.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", batch_id)
        .save(path)
    )


def ingest_batch(
    batch: DataFrame, batch_id: int, raw_path: str, quarantine_path: str, checkpoint: str
) -> None:
    """Validate one micro-batch; valid rows to raw, refused rows to quarantine, each once.

    A batch that is retried after a failure is recognised by (query id, batch id), so its
    rows are not written twice.
    """
    spark = batch.sparkSession
    query_id = json.loads(lakehouse.read_text(spark, f"{checkpoint}/metadata"))["id"]
    existing = (
        spark.read.format("delta").load(raw_path).select(names.TRANSACTION_ID, names.BATCH_ID)
    )
    checked = mark_duplicates(parse_and_validate(batch), existing, batch_id)
    checked = checked.withColumn(names.BATCH_ID, F.lit(batch_id).cast("long")).persist()
    try:
        valid = checked.filter(F.col(names.REASON).isNull()).select(*RAW_SCHEMA.fieldNames())
        refused = checked.filter(F.col(names.REASON).isNotNull()).select(
            names.RECORD_ID,
            names.REASON,
            names.TRANSACTION_ID,
            # Readable by any client; the record id still identifies the original bytes.
            F.make_valid_utf8(names.VALUE).alias(names.RAW_VALUE),
            names.BATCH_ID,
        )
        # A replay (a new checkpoint over old input) must not add what is already stored.
        valid = valid.join(existing.select(names.TRANSACTION_ID), names.TRANSACTION_ID, "left_anti")
        stored = (
            spark.read.format("delta").load(quarantine_path).select(names.RECORD_ID, names.REASON)
        )
        refused = refused.join(stored, [names.RECORD_ID, names.REASON], "left_anti")
        append_once(valid, raw_path, f"{query_id}-raw", batch_id)
        append_once(refused, quarantine_path, f"{query_id}-quarantine", batch_id)
    finally:
        checked.unpersist()


def start_ingest(
    spark: SparkSession, events: DataFrame, raw_path: str, quarantine_path: str, checkpoint: str
):
    """Run ingestion of a streaming ``value`` column until the source is drained."""
    ensure_table(spark, raw_path, RAW_SCHEMA)
    ensure_table(spark, quarantine_path, QUARANTINE_SCHEMA)
    return (
        events.writeStream.foreachBatch(
            partial(
                ingest_batch,
                raw_path=raw_path,
                quarantine_path=quarantine_path,
                checkpoint=checkpoint,
            )
        )
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .queryName("ingest_transactions")
        .start()
    )


# Spark 4.1.1's Kafka source fails in its progress metrics when a restarted query first
# re-runs a batch that a crash left planned but unfinished (SPARK-55271). The batch is
# committed by then, so starting the query again carries on where it stopped.
KAFKA_RESTART_BUG = 'because the return value of "scala.Option.get()" is null'


def run_to_end(start):
    """Run the streaming query that ``start()`` starts until it has drained its source."""
    from pyspark.errors import StreamingQueryException

    query = start()
    try:
        query.awaitTermination()
    except StreamingQueryException as error:
        if KAFKA_RESTART_BUG not in str(error):
            raise
        query = start()
        query.awaitTermination()
    return query


def ingest_events(spark: SparkSession, max_files_per_trigger: int | None = None):
    """Ingest every event not read before from the profile's source into raw and quarantine."""
    raw_path = lakehouse.location(names.RAW_TABLE)
    return run_to_end(
        lambda: start_ingest(
            spark,
            sources.event_stream(spark, max_files_per_trigger),
            raw_path,
            lakehouse.location(names.QUARANTINE_TABLE),
            checkpoint=lakehouse.checkpoint_of(raw_path),
        )
    )


def write_labels(spark: SparkSession, labels, path: str) -> None:
    """Merge ground-truth labels (a pandas frame) into the labels table."""
    ensure_table(spark, path, LABELS_SCHEMA)
    rows = spark.createDataFrame(labels.astype({names.LABEL: "int32"}), LABELS_SCHEMA)
    merge_new_rows(spark, path, rows, [names.TRANSACTION_ID])


def quarantine_summary(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path).groupBy(names.REASON).count().orderBy(names.REASON)
