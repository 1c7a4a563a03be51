"""Faults of the stack's services: a Kafka broker restarted while producing, ingestion from
Kafka killed mid-run, and the S3 server gone before and during a table write.

These stop and start the native stack's processes (``stack_services``); they skip when the
services are run by something else, such as Compose.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import stack_services
from hostile import expected_ingestion
from kafka_producer import produce, producer
from processes import Worker, kill_mid_run, list_names, read_tables, run_worker, wait_until

from workbook import names, simulator
from workbook.intake import as_bytes
from workbook.simulator import SimulationConfig

EVENTS = SimulationConfig(n_transactions=2400, days=6, n_accounts=120, malformed_share=0.01)


def test_kafka_broker_restart_while_producing_then_ingestion_killed(
    s3_prefix, kafka_topic, tmp_path: Path, tally
):
    """The broker is SIGKILLed and restarted between two days of events; later the ingestion
    run is killed (JVM and Python) mid-run and started again. One comparison at the end.
    """
    stack_services.require_native("kafka", "s3")
    days = [lines for _, lines, _, _ in simulator.event_lines(EVENTS)]
    valid_ids, refused = expected_ingestion(EVENTS)
    task = {
        "job": "ingest",
        "topic": kafka_topic,
        "raw": f"{s3_prefix}/raw",
        "quarantine": f"{s3_prefix}/quarantine",
        "checkpoint": f"{s3_prefix}/checkpoint",
    }
    name = "Kafka: broker restarted while producing, then ingestion killed mid-run"
    with tally.fault(name) as outcome:
        client, failures, sent_days = producer(), [], threading.Semaphore(0)

        def send_each_day() -> None:
            for lines in days:
                failures.extend(produce(kafka_topic, [as_bytes(t) for t in lines], client))
                sent_days.release()
                time.sleep(0.5)

        sender = threading.Thread(target=send_each_day)
        sender.start()
        for _ in range(2):  # two days acknowledged, the rest still to come
            assert sent_days.acquire(timeout=120)
        stack_services.stop("kafka")
        time.sleep(2)
        stack_services.start()
        sender.join(300)
        assert not sender.is_alive() and failures == []

        kill_mid_run(task, tmp_path / "worker.log", task["checkpoint"], True, 1, 3.0)
        run_worker(task, tmp_path / "worker.log")
        tables = read_tables({"raw": task["raw"], "quarantine": task["quarantine"]}, tmp_path)
        outcome.compare(valid_ids, [r[names.TRANSACTION_ID] for r in tables["raw"]])
        outcome.compare(refused, [r[names.RECORD_ID] for r in tables["quarantine"]])


ROWS = 200_000


def test_s3_unavailable(s3_prefix, tmp_path: Path, tally):
    stack_services.require_native("s3")
    path = f"{s3_prefix}/outage"
    task = {"job": "write", "path": path, "rows": ROWS}
    with tally.fault("S3 server down before and during a table write") as outcome:
        # Down before the write: a clear error that names the service, before any work.
        stack_services.stop("s3")
        try:
            worker = Worker(task, tmp_path / "down.log")
            assert worker.process.wait(120) != 0
        finally:
            stack_services.start()
        log = (tmp_path / "down.log").read_text(errors="replace")
        assert "S3 object storage (MinIO or S3Proxy) is not reachable" in log
        assert list_names(path) == []

        # Down in the middle of writing data files: Delta commits last, so the table either
        # does not exist or is whole.
        worker = Worker(task, tmp_path / "during.log")
        try:
            wait_until(
                lambda: (
                    worker.process.poll() is not None
                    or any(n.startswith("part-") for n in list_names(path))
                ),
                240,
                "the first data file",
                poll=0.2,
            )
            stack_services.stop("s3")
            code = worker.process.wait(300)
        finally:
            if worker.process.poll() is None:
                worker.process.kill()
            stack_services.start()
        table = read_tables({"outage": path}, tmp_path, columns=["id"])["outage"]
        if code == 0:  # the write finished before the outage mattered: all rows
            outcome.compare(range(ROWS), [r["id"] for r in table])
        else:
            assert table is None, "a failed write left a table behind"
            outcome.compare([], [])
