"""Producing test messages the way the workbook does: an idempotent producer, acknowledged."""

from __future__ import annotations

from workbook import intake
from workbook.config import required


def producer():
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": required("KAFKA_BOOTSTRAP_SERVERS"),
            "enable.idempotence": True,
            "linger.ms": 20,
            # Long enough to ride out a broker restart.
            "message.timeout.ms": 180_000,
            "logger": intake.client_log("reliability-producer"),
        }
    )


def produce(topic: str, messages: list[bytes], client=None) -> list[str]:
    """Send and wait for every acknowledgement; returns the failures (empty when all landed)."""
    client = client or producer()
    failures: list[str] = []

    def on_delivery(error, _message) -> None:
        if error is not None:
            failures.append(str(error))

    for message in messages:
        while True:
            try:
                client.produce(topic, message, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let acknowledgements drain it
                client.poll(0.5)
        client.poll(0)
    unsent = client.flush(200)
    return failures + [f"{unsent} messages not acknowledged"] * bool(unsent)
