"""Ingestion: parse landed events, validate them, and write raw and quarantine Delta tables.

Events arrive as text (a JSON line from a file, or a Kafka message value). Parsing and
validation are the same for every source: each event ends in the raw table exactly once,
or in the quarantine table with the reason it was refused.
"""

from __future__ import annotations

from functools import partial

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from workbook import contract, lakehouse, lineage, micro_batches, names, sources
from workbook.contract import (
    EVENT_FIELDS,
    KNOWN_CURRENCIES,
    MAX_AMOUNT,
    MAX_EVENT_BYTES,
    REQUIRED_FIELDS,
)
from workbook.lakehouse import ensure_table, merge_new_rows

TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XXX"  # contract.TIMESTAMP_PATTERN's instants
# The types a field's value is read as, and the names schema_of_variant gives JSON numbers.
SPARK_TYPES = {
    contract.TEXT: "string",
    contract.TIMESTAMP: "string",
    contract.NUMBER: "double",
    contract.BOOLEAN: "boolean",
}
NUMBER_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE")

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


def _has_kind(json_type: Column, kind: str) -> Column:
    """Whether a value's JSON type (``schema_of_variant``'s name) is the contract's ``kind``."""
    if kind == contract.NUMBER:
        return json_type.isin(*NUMBER_TYPES) | json_type.startswith("DECIMAL")
    return json_type == ("BOOLEAN" if kind == contract.BOOLEAN else "STRING")


def parse_and_validate(events: DataFrame) -> DataFrame:
    """Typed event columns, ``record_id`` and ``reason`` (null for a valid event) from ``value``.

    The contract's rules that need only the event itself (``contract.STATELESS``), in its
    order; ``mark_late`` and ``mark_duplicates`` add the two that need the data before.
    """
    text = F.col(names.VALUE)
    # Parsed once, in its own projection, so that every rule reads the same parsed value.
    parsed = events.select(
        text, F.sha2(text, 256).alias(names.RECORD_ID), F.try_parse_json(text).alias("_json")
    )
    json_type = {
        f: F.schema_of_variant(F.variant_get("_json", f"$.{f}", "variant")) for f in EVENT_FIELDS
    }
    value = {
        f.name: F.try_variant_get("_json", f"$.{f.name}", SPARK_TYPES[f.kind])
        for f in contract.FIELDS
    }
    timestamp = F.try_to_timestamp(value[names.TIMESTAMP], F.lit(TIMESTAMP_FORMAT))
    amount = value[names.AMOUNT]
    typed = parsed.select(
        "*",
        *[v.alias(f"_{f}") for f, v in value.items()],
        *[t.alias(f"_type_{f}") for f, t in json_type.items()],
        timestamp.alias("_instant"),
        F.json_object_keys(text).alias("_keys"),
    )
    value = {f: F.col(f"_{f}") for f in value}
    json_type = {f: F.col(f"_type_{f}") for f in json_type}
    timestamp, amount = F.col("_instant"), value[names.AMOUNT]
    absent = {f: t.isNull() | (t == "VOID") for f, t in json_type.items()}
    rule = {
        "oversized_event": F.octet_length(text) > MAX_EVENT_BYTES,
        # The file source and the Kafka value's cast keep bytes that are not UTF-8 as they
        # are; parsed, they would pass as altered text (U+FFFD), so they are refused here.
        "invalid_encoding": ~F.is_valid_utf8(text),
        "malformed_json": F.col("_json").isNull()
        | ~F.schema_of_variant("_json").startswith("OBJECT"),
        "unknown_field": F.size(F.array_except("_keys", F.array(*map(F.lit, EVENT_FIELDS)))) > 0,
        "missing_required_field": F.greatest(*[absent[f] for f in REQUIRED_FIELDS]),
        "wrong_type": F.greatest(
            *[~absent[f.name] & ~_has_kind(json_type[f.name], f.kind) for f in contract.FIELDS]
        ),
        **{
            f"invalid_{f.name}": ~value[f.name].rlike(contract.full_match(f.pattern))
            for f in contract.PATTERNED_FIELDS
        },
        # An amount that does not read as a double is refused too, not let through as null;
        # NaN is the largest double in Spark: the upper bound refuses it.
        "invalid_amount": ~F.coalesce((amount > 0) & (amount <= MAX_AMOUNT), F.lit(False)),
        "unknown_currency": ~value[names.CURRENCY].isin(*KNOWN_CURRENCIES),
        "invalid_timestamp": ~value[names.TIMESTAMP].rlike(
            contract.full_match(contract.TIMESTAMP_PATTERN)
        )
        | timestamp.isNull(),
        "ancient_timestamp": timestamp < F.lit(contract.EARLIEST_TIMESTAMP),
        "future_timestamp": timestamp > F.current_timestamp(),
    }
    as_typed = {**value, names.TIMESTAMP: timestamp}
    return typed.select(
        names.VALUE,
        names.RECORD_ID,
        *[as_typed[f].alias(f) for f in EVENT_FIELDS],
        _first_failure([(r, rule[r]) for r in contract.STATELESS]).alias(names.REASON),
    )


def data_clock(checked: DataFrame, raw: DataFrame | None):
    """The data's clock for a batch: the newest event time in raw (None: empty) and among its
    valid events."""
    valid = checked.filter(F.col(names.REASON).isNull())
    newest = valid.agg(F.max(names.TIMESTAMP)).first()[0]
    if raw is None:
        return newest
    # Only raw's events newer than the batch's can move the clock: the files that hold none
    # are skipped by their statistics, so the cost follows the batch, not raw's size.
    later = raw if newest is None else raw.filter(F.col(names.TIMESTAMP) > F.lit(newest))
    newer = later.agg(F.max(names.TIMESTAMP)).first()[0]
    return max((t for t in (newest, newer) if t is not None), default=None)


def mark_late(checked: DataFrame, clock) -> DataFrame:
    """Refuse a valid event older than ``contract.MAX_LATENESS`` before the data's ``clock``."""
    if clock is None:  # no valid event yet: nothing can be late
        return checked
    late = F.col(names.TIMESTAMP) < F.lit(clock - contract.MAX_LATENESS)
    return checked.withColumn(
        names.REASON,
        F.coalesce(F.col(names.REASON), F.when(late, F.lit("late_event"))),
    )


def mark_duplicates(checked: DataFrame, existing_ids: DataFrame | None, batch_id: int) -> DataFrame:
    """Refuse a valid event whose transaction_id came earlier in the batch or in an earlier batch.

    ``existing_ids`` holds the raw table's (transaction_id, ingest_batch_id), None while raw is
    empty; rows written by this same batch id are a retry of this batch, not duplicates.
    """
    # Rank valid rows among themselves: a refused copy must not push the valid one out.
    first = Window.partitionBy(names.TRANSACTION_ID, F.col(names.REASON).isNull()).orderBy(
        names.RECORD_ID
    )
    ranked = checked.withColumn(
        "_rank", F.when(F.col(names.REASON).isNull(), F.row_number().over(first))
    )
    duplicate = F.col("_rank") > 1
    if existing_ids is not None:
        earlier = existing_ids.filter(F.col(names.BATCH_ID) != batch_id).select(
            names.TRANSACTION_ID, F.lit(True).alias("_seen")
        )
        ranked = ranked.join(earlier, names.TRANSACTION_ID, "left")
        duplicate = duplicate | F.col("_seen").isNotNull()
    return ranked.withColumn(
        names.REASON,
        F.coalesce(F.col(names.REASON), F.when(duplicate, F.lit("duplicate_transaction_id"))),
    ).drop("_rank", "_seen")


def ingest_batch(batch: DataFrame, batch_id: int, raw_path: str, quarantine_path: str) -> None:
    """Validate one micro-batch; valid rows to raw, refused rows to quarantine, each once.

    A batch that is retried after a failure is recognised by its query and batch id
    (``micro_batches``), so its rows are not written twice.
    """
    spark = batch.sparkSession
    if all(micro_batches.is_committed(spark, p, batch_id) for p in (raw_path, quarantine_path)):
        return
    # Tables still empty (the first batch) are not read: nothing in them to compare with.
    raw, stored = (_stored_rows(spark, p) for p in (raw_path, quarantine_path))
    parsed = parse_and_validate(batch).persist()
    clock = data_clock(parsed, raw)  # also computes ``parsed``: its size is known from here
    existing = None
    if raw is not None:
        # Raw's rows with this batch's ids: as few as the batch, whatever raw holds, so the
        # two joins below read them from memory instead of shuffling every id of raw twice.
        ids = parsed.select(names.TRANSACTION_ID).dropna().distinct()
        existing = (
            raw.select(names.TRANSACTION_ID, names.BATCH_ID)
            .join(ids, names.TRANSACTION_ID, "left_semi")
            .localCheckpoint()
        )
    checked = mark_duplicates(mark_late(parsed, clock), existing, batch_id)
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
        if existing is not None:
            stored_ids = existing.select(names.TRANSACTION_ID)
            valid = valid.join(stored_ids, names.TRANSACTION_ID, "left_anti")
        if stored is not None:
            stored_reasons = stored.select(names.RECORD_ID, names.REASON)
            refused = refused.join(stored_reasons, [names.RECORD_ID, names.REASON], "left_anti")
        micro_batches.append_once(valid, raw_path, batch_id)
        micro_batches.append_once(refused, quarantine_path, batch_id)
    finally:
        checked.unpersist()
        parsed.unpersist()


def _stored_rows(spark: SparkSession, path: str) -> DataFrame | None:
    """The Delta table at ``path``, or None while it is as ``ensure_table`` made it."""
    return None if lakehouse.is_empty(spark, path) else spark.read.format("delta").load(path)


def start_ingest(
    spark: SparkSession, events: DataFrame, raw_path: str, quarantine_path: str, checkpoint: str
):
    """Run ingestion of a streaming ``value`` column until the source is drained."""
    ensure_table(spark, raw_path, RAW_SCHEMA)
    ensure_table(spark, quarantine_path, QUARANTINE_SCHEMA)
    return (
        events.writeStream.foreachBatch(
            partial(ingest_batch, raw_path=raw_path, quarantine_path=quarantine_path)
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
    quarantine_path = lakehouse.location(names.QUARANTINE_TABLE)
    query = run_to_end(
        lambda: start_ingest(
            spark,
            sources.event_stream(spark, max_files_per_trigger),
            raw_path,
            quarantine_path,
            checkpoint=lakehouse.checkpoint_of(raw_path),
        )
    )
    # Spark reports the landed files it read, not a Kafka topic read in foreachBatch.
    written = [lineage.at(raw_path), lineage.at(quarantine_path)]
    lineage.record("ingest_events", [sources.dataset()], written)
    return query


def write_labels(spark: SparkSession, labels, path: str) -> None:
    """Merge ground-truth labels (a pandas or Spark frame) into the labels table."""
    ensure_table(spark, path, LABELS_SCHEMA)
    if not isinstance(labels, DataFrame):
        labels = spark.createDataFrame(labels.astype({names.LABEL: "int32"}), LABELS_SCHEMA)
    merge_new_rows(spark, path, labels, [names.TRANSACTION_ID])
    lineage.record("receive_labels", [lineage.GROUND_TRUTH], [lineage.at(path)])


def quarantine_summary(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path).groupBy(names.REASON).count().orderBy(names.REASON)
