"""After the notebooks ran on the stack: where their data went, and where their jobs ran."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime

import pytest
from confluent_kafka import Consumer, TopicPartition
from pyspark.sql import functions as F

from workbook import lakehouse, names, registry, services
from workbook.config import get_settings


@pytest.fixture(scope="module")
def spark():
    from workbook.spark import get_spark

    session = get_spark("stack-tests")
    yield session
    session.stop()


def completed_apps() -> dict[str, list[dict]]:
    host, _ = services.SERVICES["spark"].address()
    port = os.environ.get("SPARK_MASTER_WEBUI_PORT", "8080")
    with urllib.request.urlopen(f"http://{host}:{port}/json/", timeout=10) as response:
        state = json.load(response)
    apps: dict[str, list[dict]] = {}
    for app in state["completedapps"] + state["activeapps"]:
        apps.setdefault(app["name"], []).append(app)
    return apps


def ran_on_cluster(apps: list[dict], moment: datetime) -> bool:
    """Whether one of the applications was running on the cluster at ``moment``."""
    at = moment.timestamp() * 1000
    return any(a["starttime"] <= at <= a["starttime"] + max(a["duration"], 0) for a in apps)


def test_tables_are_in_the_buckets():
    client = services.s3_client()
    for bucket, name in (names.RAW_TABLE, names.FEATURES_TABLE, names.PREDICTIONS_TABLE):
        logs = list(client.list_objects(bucket, prefix=f"{name}/_delta_log/", recursive=True))
        assert logs, f"no Delta log under s3a://{bucket}/{name}"
    model_bucket, model = names.MODEL
    assert list(client.list_objects(model_bucket, prefix=f"{model}/", recursive=True))


def test_features_and_training_ran_on_the_standalone_cluster(spark):
    apps = completed_apps()
    features = lakehouse.location(names.FEATURES_TABLE)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{features}`")
    first_write = history.filter("operation IN ('WRITE', 'MERGE')").orderBy("version").first()
    assert first_write is not None, "02_features wrote no rows"
    assert ran_on_cluster(apps.get("02_features", []), first_write["timestamp"]), apps.keys()

    # The run's record, written by the MLflow server into the models bucket.
    bucket, model = names.MODEL
    objects = services.s3_client().list_objects(bucket, prefix=f"{model}/", recursive=True)
    records = [o for o in objects if o.object_name.endswith(f"/{registry.METADATA_FILE}")]
    assert records, f"no {registry.METADATA_FILE} of a training run in s3://{bucket}/{model}"
    # 03 trains first; any later run is a challenger of 06's loop.
    first, *challengers = sorted(records, key=lambda o: o.last_modified)
    assert ran_on_cluster(apps.get("03_train", []), first.last_modified), apps.keys()
    for record in challengers:
        assert ran_on_cluster(apps.get("06_monitor_retrain", []), record.last_modified), (
            record.object_name
        )


def test_every_event_in_the_topic_landed_exactly_once(spark):
    """Each Kafka message is either one raw row or one quarantine row, never both or none."""
    consumer = Consumer(
        {"bootstrap.servers": get_settings().kafka_bootstrap_servers, "group.id": "stack-tests"}
    )
    topic = consumer.list_topics(names.TRANSACTIONS_TOPIC, timeout=10).topics[
        names.TRANSACTIONS_TOPIC
    ]
    messages = 0
    for partition in topic.partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(names.TRANSACTIONS_TOPIC, partition), timeout=10
        )
        messages += high - low
    consumer.close()
    raw = spark.read.format("delta").load(lakehouse.location(names.RAW_TABLE)).count()
    quarantine = spark.read.format("delta").load(lakehouse.location(names.QUARANTINE_TABLE))
    assert messages > 0
    assert raw + quarantine.count() == messages


def test_the_champion_is_read_through_the_server_as_mlflow_reads_it():
    """The service's light reader (REST) and MLflow's client agree; the export is served."""
    expected = registry.client().get_model_version_by_alias(registry.MODEL_NAME, names.CHAMPION)
    found = registry.alias_version(names.CHAMPION)
    assert (found.version, found.run_id) == (str(expected.version), expected.run_id)
    assert found.artifact_uri.startswith("mlflow-artifacts:/"), "artifacts served by the server"
    assert registry.load_scoring_model(names.CHAMPION).version == found.version


def test_events_taken_in_over_http_reach_raw_once_through_the_topic(spark):
    """POST /transactions on the stack: accepted events are produced keyed by transaction
    id; the same batch sent twice adds them to raw once; a refused one is never produced."""
    from workbook import ingest, launcher

    raw_path = lakehouse.location(names.RAW_TABLE)
    raw = spark.read.format("delta").load(raw_path)
    last = raw.agg({names.TIMESTAMP: "max"}).first()[0]
    stamp = last.strftime("%Y-%m-%dT%H:%M:%SZ")
    events = [
        {
            names.TRANSACTION_ID: f"TX-HTTP-{i}",
            names.TIMESTAMP: stamp,
            names.ACCOUNT_ID: "ACC900000001",
            names.AMOUNT: 10.0 + i,
            names.CURRENCY: "EUR",
        }
        for i in range(2)
    ]
    broken = {**events[0], names.TRANSACTION_ID: "TX-HTTP-BROKEN", names.CURRENCY: "XYZ"}
    body = json.dumps([*events, broken]).encode()
    before = end_offsets()
    service = launcher.start_service()
    try:
        answers = []
        for _ in range(2):
            request = urllib.request.Request(
                f"{service.url}/transactions", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 202
                answers.append(json.load(response))
    finally:
        service.stop()
    assert [e["reason"] for e in answers[0]["events"]] == [None, None, "unknown_currency"]
    new = messages_since(before)
    assert sorted(key for key, _ in new) == sorted(2 * [e[names.TRANSACTION_ID] for e in events])
    ingest.ingest_events(spark)
    ids = [e[names.TRANSACTION_ID] for e in events]
    landed = (
        spark.read.format("delta")
        .load(raw_path)
        .filter(F.col(names.TRANSACTION_ID).isin([*ids, broken[names.TRANSACTION_ID]]))
    )
    assert sorted(r[0] for r in landed.select(names.TRANSACTION_ID).collect()) == sorted(ids)


def end_offsets() -> dict[int, int]:
    consumer = Consumer(
        {"bootstrap.servers": get_settings().kafka_bootstrap_servers, "group.id": "stack-tests"}
    )
    try:
        topic = consumer.list_topics(names.TRANSACTIONS_TOPIC, timeout=10)
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(names.TRANSACTIONS_TOPIC, p), timeout=10
            )[1]
            for p in topic.topics[names.TRANSACTIONS_TOPIC].partitions
        }
    finally:
        consumer.close()


def messages_since(offsets: dict[int, int]) -> list[tuple[str, bytes]]:
    """(key, value) of every message after ``offsets``, up to the topic's end now."""
    ends = end_offsets()
    consumer = Consumer(
        {"bootstrap.servers": get_settings().kafka_bootstrap_servers, "group.id": "stack-tests"}
    )
    found = []
    try:
        consumer.assign(
            [TopicPartition(names.TRANSACTIONS_TOPIC, p, o) for p, o in offsets.items()]
        )
        while len(found) < sum(ends[p] - offsets[p] for p in offsets):
            message = consumer.poll(10)
            assert message is not None, "a message produced is not in the topic"
            found.append((message.key().decode(), message.value()))
    finally:
        consumer.close()
    return found


def test_lineage_names_the_online_store_and_holds_no_credential(spark):
    """The online refresh over JDBC (a password among its options): its lineage names the
    online table made from the features, and no event holds a credential of .env."""
    from workbook import features, lineage, store

    offline = lakehouse.read_table(spark, names.FEATURES_TABLE)
    conn = store.connect()
    try:
        store.materialize(conn, features.latest_per_account(offline))
    finally:
        conn.close()
    spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()  # the listener is asynchronous
    graph = lineage.graph()
    assert graph.inputs[lineage.ONLINE_LABEL] == {names.FEATURES_TABLE.name}
    staged = {d for run in graph.runs if run.from_spark for d in run.outputs}
    assert any(d.namespace.startswith("postgres://") for d in staged), "Spark's JDBC write"
    events = "".join(p.read_text() for p in lineage.folder().glob("*.jsonl"))
    secrets = {k: v for k, v in os.environ.items() if k.endswith(("PASSWORD", "SECRET_KEY"))}
    assert secrets and not [k for k, v in secrets.items() if v in events]
