"""Where events come from: landed files on the local profile, the Kafka topic on the stack.

These are the only edges of ingestion that differ between profiles; parsing, validation,
quarantine and the raw table downstream of ``event_stream`` are one code path.
"""

from __future__ import annotations

import json
from datetime import date
from functools import partial
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from tqdm import tqdm  # plain text bars: no widget dependency in headless kernels

from workbook import intake, lakehouse, lineage, names, services, simulator
from workbook.config import get_settings


def publish(
    spark: SparkSession, config: simulator.SimulationConfig, progress: bool = True
) -> dict[str, int]:
    """Send each simulated day's events to the profile's source; a day sent before is skipped.

    Returns how many days, valid events and malformed events the simulation holds.
    """
    return _send_days(config, _sender(spark), progress)


def send_day(spark: SparkSession, day: date, lines: list[str]) -> None:
    """Send ``lines`` as the events of ``day`` (any text: ingestion judges them), not simulated."""
    _sender(spark)(day, lines)


def _sender(spark: SparkSession):
    """``send(day, lines)`` for the profile's source."""
    if get_settings().profile == "stack":
        return _kafka_sender(spark)
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
    """Landed JSON-lines files as a stream of text events, one per line."""
    reader = spark.readStream.format("text").option("pathGlobFilter", "*.jsonl")
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    return reader.load(landing)


def _kafka_sender(spark: SparkSession):
    """Produce a day's events to the topic, then mark the day as sent in the lakehouse.

    The mark makes a rerun skip the day. Should a run stop between the broker's
    acknowledgement and the mark, the rerun sends the day again and ingestion quarantines
    the copies as duplicate transaction ids: nothing is lost, nothing lands twice in raw.
    """
    producer = intake.producer()
    marks = lakehouse.location(names.LANDING_ZONE)

    def send(day: date, lines: list[str]) -> None:
        mark = f"{marks}/{day.isoformat()}.published"
        if lakehouse.exists(spark, mark):
            return
        intake.produce(producer, lines, what=f" of {day}")
        lakehouse.write_text(spark, mark, json.dumps({"events": len(lines)}))

    return send


def kafka_stream(spark: SparkSession) -> DataFrame:
    """The transactions topic from its first offset, as text events."""
    services.require("kafka")
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", get_settings().kafka_bootstrap_servers)
        .option("subscribe", names.TRANSACTIONS_TOPIC)
        .option("startingOffsets", "earliest")
        .load()
        .select(F.col(names.VALUE).cast("string").alias(names.VALUE))
    )
