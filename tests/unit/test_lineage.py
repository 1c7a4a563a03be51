"""Lineage: the listener's settings, the events the workbook records from Python (to a file,
and over HTTP to a real server), what Spark's listener writes for a Delta write, and the
graph read back from events."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from workbook import lineage, names
from workbook.config import get_settings

RAW, FEATURES = names.RAW_TABLE.name, names.FEATURES_TABLE.name


@pytest.fixture
def lakehouse(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBOOK_LAKEHOUSE", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_PROFILE", "local")
    for name in ("LINEAGE_URL", "LINEAGE_API_KEY", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_listener_writes_to_a_file_of_its_own_beside_the_lakehouse(lakehouse):
    conf = lineage.spark_conf(get_settings(), "02_features")
    assert conf["spark.extraListeners"] == "io.openlineage.spark.agent.OpenLineageSparkListener"
    assert conf["spark.openlineage.transport.type"] == "file"
    events = Path(conf["spark.openlineage.transport.location"])
    assert events.parent == lakehouse / "_lineage" and events.name.startswith("spark-02_features-")


def test_with_a_url_events_also_go_over_http(lakehouse, monkeypatch, collector):
    url, _ = collector
    monkeypatch.setenv("LINEAGE_URL", url)
    monkeypatch.setenv("LINEAGE_API_KEY", "a-key")
    conf = lineage.spark_conf(get_settings(), "app")
    http = "spark.openlineage.transport.transports.http"
    assert conf["spark.openlineage.transport.type"] == "composite"
    assert conf["spark.openlineage.transport.transports.file.type"] == "file"
    assert conf[f"{http}.url"] == url
    assert conf[f"{http}.endpoint"] == "/api/v1/lineage"
    assert conf[f"{http}.auth.apiKey"] == "a-key"
    assert re.search(conf["spark.redaction.regex"], f"{http}.auth.apiKey"), "hidden in Spark's UI"


def test_a_server_that_does_not_answer_is_named_once_and_the_file_still_kept(
    lakehouse, monkeypatch, caplog
):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    monkeypatch.setenv("LINEAGE_URL", url)
    labels = lineage.table(names.LABELS_TABLE)
    for _ in range(2):
        lineage.record("receive_labels", [lineage.GROUND_TRUTH], [labels])
    said = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(said) == 1 and url in said[0] and "unset LINEAGE_URL" in said[0]
    assert lineage.spark_conf(get_settings(), "app")["spark.openlineage.transport.type"] == "file"
    assert len(lineage.graph().runs) == 2


def test_disabled_means_no_listener_and_no_events(lakehouse, monkeypatch):
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    assert lineage.spark_conf(get_settings(), "app") == {}
    lineage.record("job", [lineage.GROUND_TRUTH], [lineage.table(names.LABELS_TABLE)])
    assert not (lakehouse / "_lineage").exists()
    assert "No lineage recorded (OPENLINEAGE_DISABLED=true)" in lineage.graph().describe()


def test_datasets_are_named_as_spark_names_them_and_labelled_for_the_graph(lakehouse):
    settings = get_settings()
    raw = lineage.table(names.RAW_TABLE)
    assert raw == lineage.Dataset("file", str(lakehouse / names.RAW_BUCKET / RAW))
    assert lineage.at(f"s3a://{names.RAW_BUCKET}/{RAW}") == (f"s3://{names.RAW_BUCKET}", RAW)
    landed = lakehouse / names.LANDING_ZONE.bucket / names.LANDING_ZONE.name / "day=1" / "a.json"
    labelled = {
        raw: RAW,
        lineage.at(f"s3a://{names.CURATED_BUCKET}/{FEATURES}"): FEATURES,
        lineage.Dataset("file", str(landed)): lineage.EVENTS,
        lineage.Dataset("kafka://127.0.0.1:9092", names.TRANSACTIONS_TOPIC): lineage.EVENTS,
        lineage.Dataset("postgres://localhost:5432", "db.public.daily_account_features"): (
            lineage.ONLINE_LABEL
        ),
        lineage.Dataset(lineage.MODELS, f"{names.MODEL.name}/3"): "model v3",
        lineage.GROUND_TRUTH: lineage.GROUND_TRUTH_LABEL,
    }
    for dataset, label in labelled.items():
        assert lineage.label(dataset, settings) == label, dataset
    details = [
        lineage.Dataset("file", f"{raw.name}/_delta_log"),
        lineage.Dataset("file", "/elsewhere/table"),
        lineage.Dataset("postgres://localhost:5432", "db.daily_account_features_staging"),
    ]
    assert all(lineage.label(d, settings) is None for d in details)


def event(run_id: str, job: str, inputs=(), outputs=(), producer="spark") -> str:
    def named(datasets):
        return [{"namespace": d.namespace, "name": d.name} for d in datasets]

    return json.dumps(
        {
            "run": {"runId": run_id},
            "job": {"namespace": "workbook", "name": job},
            "producer": f"https://github.com/OpenLineage/OpenLineage/integration/{producer}",
            "inputs": named(inputs),
            "outputs": named(outputs),
        }
    )


def test_a_runs_events_are_merged_and_a_table_that_only_rewrites_itself_adds_no_edge(lakehouse):
    raw, features = lineage.table(names.RAW_TABLE), lineage.table(names.FEATURES_TABLE)
    folder = lakehouse / "_lineage"
    folder.mkdir()
    (folder / "spark-02-1.jsonl").write_text(
        "\n".join(
            [
                event("a", "02_features.merge", inputs=[raw]),  # START: inputs only
                event("a", "02_features.merge", outputs=[features]),  # COMPLETE
                event("b", "02_features.merge", inputs=[features], outputs=[features]),
                '{"run": {"runId": "c"',  # a line cut short
            ]
        )
    )
    graph = lineage.graph()
    assert graph.inputs == {FEATURES: {RAW}}
    assert graph.writers == {FEATURES: {"02_features"}}
    assert graph.unreadable == 1
    assert graph.datasets == [RAW, FEATURES]
    assert "1 event lines could not be read" in graph.describe()


def test_recorded_runs_are_read_back_into_the_graph(lakehouse):
    lineage.record("receive_labels", [lineage.GROUND_TRUTH], [lineage.table(names.LABELS_TABLE)])
    (written,) = (lakehouse / "_lineage").glob("python-*.jsonl")
    runs, _ = lineage.read_runs(written.parent)
    assert [r.job.endswith(".receive_labels") and not r.from_spark for r in runs] == [True]
    assert lineage.graph().inputs == {names.LABELS_TABLE.name: {lineage.GROUND_TRUTH_LABEL}}


class _Collector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def collector():
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _Collector.received
    server.shutdown()


def test_with_a_url_a_recorded_run_is_posted_and_still_kept_in_the_file(
    lakehouse, monkeypatch, collector
):
    url, received = collector
    monkeypatch.setenv("LINEAGE_URL", url)
    monkeypatch.setenv("LINEAGE_API_KEY", "a-key")
    lineage.record("receive_labels", [lineage.GROUND_TRUTH], [lineage.table(names.LABELS_TABLE)])
    ((path, auth, posted),) = received
    assert path == "/api/v1/lineage" and auth == "Bearer a-key"
    assert posted["outputs"][0]["name"].endswith(names.LABELS_TABLE.name)
    assert lineage.graph().inputs == {names.LABELS_TABLE.name: {lineage.GROUND_TRUTH_LABEL}}


@pytest.mark.spark
def test_sparks_listener_reports_a_delta_write_with_its_input(spark, lakehouse_dir):
    source, target = lakehouse_dir / "lineage-source", lakehouse_dir / "lineage-target"
    spark.range(10).write.format("delta").mode("overwrite").save(str(source))
    spark.read.format("delta").load(str(source)).filter("id > 3").write.format("delta").mode(
        "overwrite"
    ).save(str(target))
    spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()  # the listener is asynchronous
    runs, unreadable = lineage.read_runs(lakehouse_dir / "_lineage")
    wrote = [r for r in runs if lineage.Dataset("file", str(target)) in r.outputs]
    assert wrote and all(r.from_spark for r in wrote)
    assert any(lineage.Dataset("file", str(source)) in r.inputs for r in wrote)
    assert unreadable == 0


@pytest.mark.spark
def test_with_a_url_sparks_events_are_posted_and_still_kept_in_the_file(tmp_path, collector):
    """A session of its own (the listener is set when a session starts): one Delta write."""
    url, received = collector
    script = textwrap.dedent(
        f"""
        from workbook.spark import get_spark
        spark = get_spark("posting")
        spark.range(5).write.format("delta").save({str(tmp_path / "table")!r})
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()
        spark.stop()
        """
    )
    env = os.environ | {"WORKBOOK_LAKEHOUSE": str(tmp_path), "LINEAGE_URL": url}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    posted = [event["job"]["name"] for _, _, event in received]
    writes = [n for n in posted if n.startswith("posting.execute_save_into_data_source_command")]
    assert writes, posted
    (kept,) = (tmp_path / "_lineage").glob("spark-posting-*.jsonl")
    assert len(kept.read_text().splitlines()) == len(received)
