"""The ingestion edge behind ``POST /transactions``: a batch read, judged by the contract
event by event, and its accepted events sent where the simulator sends its days.

On the local profile a batch lands as a JSON-lines file in the landing zone, named after
its content, so the same batch sent twice is one file; on the stack its events are produced
to the transactions topic by an idempotent producer, keyed by transaction id. Either way
01's ingestion reads them like any other event. Nothing here imports Spark: the scoring
service takes events in through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from workbook import contract, lakehouse, names, services
from workbook.config import get_settings

MAX_EVENTS = 500  # per POST /transactions: a batch is judged and sent in well under a second
MAX_BODY_BYTES = MAX_EVENTS * contract.MAX_EVENT_BYTES


class BadBatch(ValueError):
    """A body that is not a batch of events: ``status`` 400 (not JSON), 413 or 422."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_batch(body: bytes) -> list:
    """The events of a request body: a JSON array of 1 to ``MAX_EVENTS`` items of any kind.

    Each item is judged on its own (``judge``); a body that is not such an array is refused
    whole.
    """
    if len(body) > MAX_BODY_BYTES:
        raise BadBatch(413, f"the body is over {MAX_BODY_BYTES:,} bytes: send smaller batches")
    try:
        events = contract.read_json(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadBatch(400, f"the body is not UTF-8 JSON: {error}") from None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise BadBatch(422, f"the body must be a JSON array of 1 to {MAX_EVENTS} events")
    return events


@dataclass(frozen=True)
class Outcome:
    index: int  # the event's place in the batch
    transaction_id: str | None
    reason: str | None  # the contract's reason, or None: accepted


def judge(events: list, clock: datetime | None = None) -> tuple[list[Outcome], list[str]]:
    """Each event accepted or refused by the contract; the lines of the accepted ones.

    The data's clock for ``late_event`` is the newest valid event time of the batch and
    ``clock`` (what came before). A transaction id repeated in the batch is refused after its
    first valid event. An accepted line is the event re-serialised, the bytes ingestion reads.
    """
    reasons = [_refused(e) for e in events]
    valid = [i for i, r in enumerate(reasons) if r is None]
    instants = [contract.parse_timestamp(events[i][names.TIMESTAMP]) for i in valid]
    newest = max([*instants, *([clock] if clock else [])], default=None)
    seen: set[str] = set()
    for i in valid:
        if contract.is_late(events[i][names.TIMESTAMP], newest):
            reasons[i] = "late_event"
        elif events[i][names.TRANSACTION_ID] in seen:
            reasons[i] = "duplicate_transaction_id"
        else:
            seen.add(events[i][names.TRANSACTION_ID])
    outcomes = [
        Outcome(i, _transaction_id(e), r)
        for i, (e, r) in enumerate(zip(events, reasons, strict=True))
    ]
    return outcomes, [json.dumps(events[o.index]) for o in outcomes if o.reason is None]


def _refused(event) -> str | None:
    """The contract's reason for one parsed item, judged as the line it would land as."""
    # Numbers past a double's range (1e400) stay numbers here, as in ingestion.
    if len(json.dumps(event, default=str).encode()) > contract.MAX_EVENT_BYTES:
        return "oversized_event"
    return contract.check_event(event)


def _transaction_id(event) -> str | None:
    found = event.get(names.TRANSACTION_ID) if isinstance(event, dict) else None
    return found if isinstance(found, str) else None


def as_bytes(line: str | bytes) -> bytes:
    """A line as sent: text in UTF-8; bytes (the simulator's events that are not UTF-8) as is."""
    return line if isinstance(line, bytes) else line.encode()


def land_lines(path: Path, lines: list[str | bytes]) -> bool:
    """Write ``lines`` as a JSON-lines file, atomically; False if it holds them already."""
    body = b"".join(as_bytes(line) + b"\n" for line in lines)  # no lines: an empty file
    if path.exists() and path.read_bytes() == body:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(body)
    tmp.rename(path)  # a streaming reader never sees half a file
    return True


def client_log(name: str) -> logging.Logger:
    """A Kafka client's own log, kept in the lakehouse's log folder."""
    logger = logging.getLogger(f"workbook.{name}")
    if not logger.handlers:
        path = get_settings().lakehouse / "_logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.addHandler(logging.FileHandler(path))
        logger.propagate = False
    return logger


def producer(bootstrap_servers: str | None = None):
    """An idempotent Kafka producer for the profile's broker (settings from ``.env``), or
    for ``bootstrap_servers`` (on Spark's executors, which have no settings of their own)."""
    from confluent_kafka import Producer

    if bootstrap_servers is None:
        services.require("kafka")
        bootstrap_servers = get_settings().kafka_bootstrap_servers
        log = client_log("kafka-producer")
    else:
        log = logging.getLogger("workbook.kafka-producer")  # to the executor's own log
    return Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,  # broker-side dedup of the producer's own retries
            "linger.ms": 20,
            "compression.type": "lz4",
            "message.timeout.ms": 60_000,
            # librdkafka's own notices (e.g. a broker still starting) go to a log file;
            # delivery failures are raised by ``produce``.
            "logger": log,
        }
    )


def produce(
    producer,
    lines: list[str | bytes],
    keys: list[str] | None = None,
    what: str = "",
    topic: str = names.TRANSACTIONS_TOPIC,
) -> None:
    """Produce ``lines`` to ``topic`` and wait until the broker has them all."""
    failures: list[str] = []

    def on_delivery(error, _message) -> None:
        if error is not None:
            failures.append(str(error))

    for i, line in enumerate(lines):
        key = keys[i].encode() if keys else None
        while True:
            try:
                producer.produce(topic, as_bytes(line), key=key, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: wait for acknowledgements
                producer.poll(0.5)
        producer.poll(0)
    unsent = producer.flush(60)
    if unsent or failures:
        raise services.SERVICES["kafka"].unavailable(
            f"{unsent + len(failures)} events{what} not acknowledged"
            + (f": {failures[0]}" if failures else "")
        )


class Edge:
    """The ingestion edge behind ``POST /transactions``, for the active profile.

    It judges a batch by the contract and sends the accepted events where the simulator
    sends its days, one batch at a time; it keeps the data's clock it has seen so far (the
    newest accepted event time) for ``late_event``.
    """

    def __init__(self, profile: str | None = None, topic: str = names.TRANSACTIONS_TOPIC):
        self.profile = profile or get_settings().profile
        self.topic = topic  # on the stack (a benchmark uses a topic of its own)
        self.clock: datetime | None = None
        self._producer = None
        self._lock = threading.Lock()

    def take_in(self, events: list) -> list[Outcome]:
        with self._lock:
            outcomes, lines = judge(events, self.clock)
            accepted = [o for o in outcomes if o.reason is None]
            self._send(lines, [o.transaction_id for o in accepted])
            instants = [
                contract.parse_timestamp(events[o.index][names.TIMESTAMP]) for o in accepted
            ]
            self.clock = max([*instants, *([self.clock] if self.clock else [])], default=None)
            return outcomes

    def _send(self, lines: list[str], keys: list[str]) -> None:
        if not lines:
            return
        if self.profile == "stack":
            if self._producer is None:
                self._producer = producer()
            produce(self._producer, lines, keys, topic=self.topic)
            return
        # Named after its content: the same batch sent again is the same file.
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:24]
        landing = Path(lakehouse.location(names.LANDING_ZONE))
        land_lines(landing / f"transactions-api-{digest}.jsonl", lines)
