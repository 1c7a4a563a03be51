"""The ingestion edge: ``POST /transactions`` throughput, into the sink and into raw.

The scoring service runs in its own process on a lakehouse of this benchmark's own (the
other benchmarks' tables are left alone); one client sends batches of 500 valid simulated
events, one request at a time over a keep-alive connection. Locally the sink is the
landing zone (a file per batch); ingestion then reads the files into the raw table. On the
stack the sink is the Kafka topic: when the stack's broker is up, the same batches are
also judged and produced by the edge itself (``intake.Edge``, no HTTP) into a topic of the
benchmark's own, created and deleted around it, so the stack's own topic is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

from benchmarks import common
from workbook import ingest, intake, lakehouse, latency, launcher, names, services, simulator
from workbook.config import get_settings, load_dotenv


def events(n: int) -> list[dict]:
    config = simulator.SimulationConfig(n_transactions=n, days=1, malformed_share=0.0)
    frame, _labels = simulator.simulate(config)
    return json.loads(frame.to_json(orient="records"))  # plain JSON types, as a client sends


def run(spark, n: int = 50_000, batch: int = intake.MAX_EVENTS) -> dict:
    home = common.WORK_DIR / "intake"
    shutil.rmtree(home, ignore_errors=True)
    previous = os.environ["WORKBOOK_LAKEHOUSE"]
    os.environ["WORKBOOK_LAKEHOUSE"] = str(home)
    try:
        sent = events(n)
        bodies = [json.dumps(sent[i : i + batch]).encode() for i in range(0, len(sent), batch)]
        service = launcher.start_service()
        try:
            with latency.HttpClient(service.url) as client:
                common.progress(f"intake: {len(sent):,} events in {len(bodies)} requests")
                with common.timed() as posting:
                    for body in bodies:
                        client.call("POST", "/transactions", body, ok=(202,))
        finally:
            service.stop()
        with common.timed() as ingesting:
            ingest.ingest_events(spark)
        landed = spark.read.format("delta").load(lakehouse.location(names.RAW_TABLE)).count()
    finally:
        os.environ["WORKBOOK_LAKEHOUSE"] = previous
        shutil.rmtree(home, ignore_errors=True)
    assert landed == len(sent), f"{landed} of {len(sent)} events in raw"
    into_sink = len(sent) / posting()
    into_raw = len(sent) / (posting() + ingesting())
    common.show("POST /transactions: events into the sink", into_sink, "events/s")
    common.show("POST /transactions then ingestion: into raw", into_raw, "events/s")
    topic_s = into_topic([json.loads(body) for body in bodies])
    if topic_s is not None:
        common.show("the edge into a Kafka topic (stack)", len(sent) / topic_s, "events/s")
    return {
        "headline": {
            "intake_events_per_s": round(into_sink),
            "intake_to_raw_events_per_s": round(into_raw),
            "intake_to_topic_events_per_s": round(len(sent) / topic_s) if topic_s else None,
        },
        "figures": {
            "events": len(sent),
            "requests": len(bodies),
            "posting_s": round(posting(), 2),
            "ingesting_s": round(ingesting(), 2),
            "to_topic_s": round(topic_s, 2) if topic_s else None,
        },
        "conditions": {
            "profile": "local: the sink is the landing zone (one JSON-lines file per batch)",
            "batch": batch,
            "client": "one keep-alive connection, one request at a time",
            "ingestion": "one AvailableNow run of 01's ingestion over the landed files, the "
            "first job of the benchmark's Spark session (its tables created, its code cold)",
        },
    }


def into_topic(batches: list[list]) -> float | None:
    """Seconds for the edge to judge ``batches`` and produce them into a topic of its own on
    the stack's broker; ``None`` when the broker is not up (``make stack-up``)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    load_dotenv()
    try:
        services.require("kafka")
    except services.ServiceUnavailableError as error:
        common.progress(f"intake: into a topic not measured: {error}")
        return None
    admin = AdminClient({"bootstrap.servers": get_settings().kafka_bootstrap_servers})
    topic = f"bench-intake-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    try:
        edge = intake.Edge(profile="stack", topic=topic)
        with common.timed() as producing:
            for batch in batches:
                outcomes = edge.take_in(batch)
                assert all(o.reason is None for o in outcomes)
        return producing()
    finally:
        admin.delete_topics([topic])[topic].result()


def plot(section: dict, path) -> None:
    import matplotlib.pyplot as plt

    figures = section["figures"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = {
        "ingestion into raw": figures["ingesting_s"],
        "POST /transactions": figures["posting_s"],
        "the edge into a topic (stack)": figures.get("to_topic_s"),
    }
    bars = {k: v for k, v in bars.items() if v is not None}
    ax.barh(list(bars), list(bars.values()))
    ax.set(title=f"{figures['events']:,} events over HTTP", xlabel="seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
