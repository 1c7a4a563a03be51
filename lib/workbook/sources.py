"""Where events come from: landed files on the local profile, the Kafka topic on the stack.

These are the only edges of ingestion that differ between profiles; parsing, validation,
quarantine and the raw table downstream of ``event_stream`` are one code path.
"""

from __future__ import annotations

import json
from datetime import date
from functools import lru_cache, partial
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from tqdm import tqdm  # plain text bars: no widget dependency in headless kernels

from workbook import intake, lakehouse, lineage, names, services, simulator, spark_simulator
from workbook.config import get_settings

# A backlog (a large simulation, or days of traffic) is ingested in micro-batches of about
# two million events, so that ingestion's memory and its spills do not grow with the backlog.
BATCH_EVENTS = 2_000_000
BATCH_BYTES = BATCH_EVENTS * 256  # a simulated event's JSON line is about 250 bytes


def publish(
    spark: SparkSession, config: simulator.SimulationConfig, progress: bool = True
) -> dict[str, int]:
    """Send each simulated day's events to the profile's source; a day sent before is skipped.

    Over several days, each day is made and sent by one of Spark's executors
    (``spark_simulator``), in parallel, and nothing passes through the driver; a single day
    (the loop's) is made on the driver, which saves starting Python on the executors.
    Returns how many days, valid events and malformed events the simulation holds.
    """
    if config.days == 1:
        return _send_days(config, _sender(spark), progress)
    stack = get_settings().profile == "stack"
    days = [config.day(day_index) for day_index, _ in simulator.day_plan(config)]
    marked = {day for day in days if _is_marked(spark, day)} if stack else set()
    per_day = spark_simulator.send_days(spark, config, _executor_sender(), marked, progress)
    for row in per_day[per_day["sent"]].itertuples() if stack else ():
        _mark(spark, row.day, row.valid_events + row.malformed_events)
    return {
        "days": len(per_day),
        "valid_events": int(per_day["valid_events"].sum()),
        "malformed_events": int(per_day["malformed_events"].sum()),
    }


def send_day(spark: SparkSession, day: date, lines: list[str]) -> None:
    """Send ``lines`` as the events of ``day`` (any text: ingestion judges them), not simulated."""
    _sender(spark)(day, lines)


def _sender(spark: SparkSession):
    """``send(day, lines)`` for the profile's source, on the driver."""
    if get_settings().profile == "stack":
        return _kafka_sender(spark)
    return _executor_sender()


def _executor_sender():
    """``send(day, lines)`` for the profile's source, as Spark's executors call it: with no
    session, and the settings taken on the driver (the stack's day marks are the caller's)."""
    settings = get_settings()
    if settings.profile == "stack":
        services.require("kafka")
        return partial(_produce_day, settings.kafka_bootstrap_servers)
    return partial(_land_file, Path(lakehouse.location(names.LANDING_ZONE)))


def land_files(
    config: simulator.SimulationConfig, landing: str | Path, progress: bool = True
) -> dict[str, int]:
    """Land each day as a JSON-lines file in the folder ``landing``."""
    return _send_days(config, partial(_land_file, Path(landing)), progress)


def _send_days(config: simulator.SimulationConfig, send, show: bool) -> dict[str, int]:
    totals = {"days": 0, "valid_events": 0, "malformed_events": 0}
    bar = tqdm(
        total=config.days, desc="days published", unit="day", mininterval=1, disable=not show
    )
    with bar as progress:
        for day, lines, n_valid, kinds in simulator.event_lines(config):
            send(day, lines)
            totals["days"] += 1
            totals["valid_events"] += n_valid
            totals["malformed_events"] += len(kinds)
            progress.update()
    return totals


def event_stream(spark: SparkSession, max_files_per_trigger: int | None = None) -> DataFrame:
    """The events as a stream of text in a ``value`` column, read from the profile's source."""
    if get_settings().profile == "stack":
        return kafka_stream(spark)
    return landed_files_stream(spark, lakehouse.location(names.LANDING_ZONE), max_files_per_trigger)


def dataset() -> lineage.Dataset:
    """The profile's source, named as Spark's listener names it."""
    settings = get_settings()
    if settings.profile == "stack":
        brokers = settings.kafka_bootstrap_servers.split(",")[0]
        return lineage.Dataset(f"kafka://{brokers}", names.TRANSACTIONS_TOPIC)
    return lineage.table(names.LANDING_ZONE)


def _land_file(landing: Path, day: date, lines: list[str]) -> None:
    """Write one day as a JSON-lines file; rewriting the same day is a no-op."""
    intake.land_lines(landing / f"transactions-{day.isoformat()}.jsonl", lines)


def landed_files_stream(
    spark: SparkSession, landing: str, max_files_per_trigger: int | None = None
) -> DataFrame:
    """Landed JSON-lines files as a stream of text events, one per line; a backlog is read in
    micro-batches of at most ``BATCH_BYTES`` (or ``max_files_per_trigger`` files)."""
    reader = spark.readStream.format("text").option("pathGlobFilter", "*.jsonl")
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    else:
        reader = reader.option("maxBytesPerTrigger", BATCH_BYTES)
    return reader.load(landing)


def _kafka_sender(spark: SparkSession):
    """Produce a day's events to the topic, then mark the day as sent in the lakehouse.

    The mark makes a rerun skip the day. Should a run stop between the broker's
    acknowledgement and the mark, the rerun sends the day again and ingestion quarantines
    the copies as duplicate transaction ids: nothing is lost, nothing lands twice in raw.
    """
    producer = intake.producer()

    def send(day: date, lines: list[str]) -> None:
        if _is_marked(spark, day):
            return
        intake.produce(producer, lines, what=f" of {day}")
        _mark(spark, day, len(lines))

    return send


def _produce_day(bootstrap_servers: str, day: date, lines: list[str]) -> None:
    intake.produce(_producer(bootstrap_servers), lines, what=f" of {day}")


@lru_cache(maxsize=1)
def _producer(bootstrap_servers: str):
    """One producer per Python process: an executor's worker sends many days."""
    return intake.producer(bootstrap_servers)


def _mark_path(day: date) -> str:
    return f"{lakehouse.location(names.LANDING_ZONE)}/{day.isoformat()}.published"


def _is_marked(spark: SparkSession, day: date) -> bool:
    return lakehouse.exists(spark, _mark_path(day))


def _mark(spark: SparkSession, day: date, events: int) -> None:
    lakehouse.write_text(spark, _mark_path(day), json.dumps({"events": int(events)}))


def kafka_stream(spark: SparkSession) -> DataFrame:
    """The transactions topic from its first offset, as text events."""
    services.require("kafka")
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", get_settings().kafka_bootstrap_servers)
        .option("subscribe", names.TRANSACTIONS_TOPIC)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", BATCH_EVENTS)
        .load()
        .select(F.col(names.VALUE).cast("string").alias(names.VALUE))
    )
