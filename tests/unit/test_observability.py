"""The scoring service's metrics and traces, against a real (embedded) PostgreSQL.

The alert rules and the dashboard may only use metrics the service exposes: checked here
against a real exposition; the rules' behaviour is tested by promtool (tests/stack).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from test_serving import ACCOUNTS, UNKNOWN, artifact, online_rows_and_model

from workbook import names, observability, serving, store

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # see test_serving
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "stack" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "stack" / "grafana" / "dashboards" / "scoring.json"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EVENT = {
    names.TRANSACTION_ID: "TX-1",
    names.TIMESTAMP: "2025-01-31T02:15:00Z",
    names.AMOUNT: 950.0,
    names.CURRENCY: "EUR",
    names.TRANSACTION_TYPE: "online",
    names.MERCHANT_ID: "M000123",
    names.CATEGORY: "electronics",
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return online_rows_and_model(tmp_path_factory)


@pytest.fixture
def spans():
    return InMemorySpanExporter()


@pytest.fixture
def client(model_file, spans):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = serving.create_app(str(model_file), tracer=provider.get_tracer("test"))
    with TestClient(app) as test_client:
        yield test_client


def samples(client) -> dict[tuple, float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def requests_total(figures, endpoint, method, status) -> float:
    key = (
        "fraud_scoring_requests_total",
        (("endpoint", endpoint), ("method", method), ("status", str(status))),
    )
    return figures.get(key, 0.0)


def test_requests_are_counted_by_route_template_and_status(client):
    assert client.get(f"/features/{ACCOUNTS[1]}").status_code == 200
    assert client.get(f"/features/{ACCOUNTS[2]}").status_code == 200
    assert client.get(f"/features/{UNKNOWN}").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/score", json={"transaction_id": "x"}).status_code == 422

    figures = samples(client)
    assert requests_total(figures, "/features/{account_id}", "GET", 200) == 2
    assert requests_total(figures, "/features/{account_id}", "GET", 404) == 1
    assert requests_total(figures, "unmatched", "GET", 404) == 1
    assert requests_total(figures, "/score", "POST", 422) == 1
    duration = (
        "fraud_scoring_request_duration_seconds_count",
        (("endpoint", "/features/{account_id}"), ("method", "GET")),
    )
    assert figures[duration] == 3
    unknown = ("fraud_scoring_unknown_accounts_total", (("endpoint", "/features/{account_id}"),))
    assert figures[unknown] == 1
    # Paths never become labels: the number of series does not grow with the accounts asked.
    assert not any(ACCOUNTS[1] in str(labels) for _, labels in figures)


def test_scores_unknown_accounts_and_the_model_in_use_are_exposed(client):
    given = []
    for account in (ACCOUNTS[1], ACCOUNTS[3], UNKNOWN):
        response = client.post("/score", json={**EVENT, names.ACCOUNT_ID: account})
        assert response.status_code == 200
        given.append(response.json()["fraud_probability"])
    batch = client.post(
        "/features/batch", json={"account_ids": [ACCOUNTS[0], UNKNOWN, "ACC777777"]}
    )
    assert batch.status_code == 200

    figures = samples(client)
    assert figures[("fraud_scoring_score_count", ())] == 3
    assert figures[("fraud_scoring_score_sum", ())] == pytest.approx(sum(given))
    below_half = figures[("fraud_scoring_score_bucket", (("le", "0.5"),))]
    assert below_half == sum(p <= 0.5 for p in given)
    assert figures[("fraud_scoring_unknown_accounts_total", (("endpoint", "/score"),))] == 1
    assert (
        figures[("fraud_scoring_unknown_accounts_total", (("endpoint", "/features/batch"),))] == 2
    )
    version = artifact()["model_version"]
    assert figures[("fraud_scoring_model_info", (("alias", "fixed"), ("version", version)))] == 1


def test_each_request_is_a_trace_with_the_postgres_lookup_as_its_child(client, spans):
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    response = client.post(
        "/score",
        json={**EVENT, names.ACCOUNT_ID: ACCOUNTS[2]},
        headers={"traceparent": traceparent},
    )
    assert response.status_code == 200

    finished = {span.name: span for span in spans.get_finished_spans()}
    server, lookup = finished["POST /score"], finished[f"SELECT {store.TABLE}"]
    assert server.kind == SpanKind.SERVER and lookup.kind == SpanKind.CLIENT
    assert lookup.parent.span_id == server.context.span_id
    # The caller's trace continues: its id comes from the traceparent header.
    assert f"{server.context.trace_id:032x}" == TRACE_ID == f"{lookup.context.trace_id:032x}"
    assert server.attributes["http.route"] == "/score"
    assert server.attributes["http.response.status_code"] == 200
    assert lookup.attributes["db.system.name"] == "postgresql"


def test_a_service_that_is_down_shows_as_5xx_in_metrics_and_traces(model_file, spans):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    dead = "host=127.0.0.1 port=1 dbname=none user=none connect_timeout=1"
    app = serving.create_app(str(model_file), conninfo=dead, tracer=provider.get_tracer("t"))
    with TestClient(app) as client:
        assert client.get(f"/features/{ACCOUNTS[1]}").status_code == 503
        assert requests_total(samples(client), "/features/{account_id}", "GET", 503) == 1
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER][:1]
    assert server.status.status_code == StatusCode.ERROR


def test_observability_can_be_turned_off(model_file, monkeypatch):
    monkeypatch.setenv("SERVING_OBSERVABILITY", "off")
    with TestClient(serving.create_app(str(model_file))) as client:
        assert client.get(f"/features/{ACCOUNTS[1]}").status_code == 200
        assert client.get("/metrics").status_code == 404


METRIC_NAME = re.compile(r"\bfraud_scoring_[a-z_]+\b")


def exposed_names(client) -> set[str]:
    client.post("/score", json={**EVENT, names.ACCOUNT_ID: ACCOUNTS[1]})
    client.get(f"/features/{UNKNOWN}")
    return {name for name, _ in samples(client)}


def used_names() -> dict[str, set[str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    targets = [t["expr"] for p in panels for t in p.get("targets", [])]
    return {
        "alert rules": {n for e in exprs for n in METRIC_NAME.findall(e)},
        "dashboard": {n for e in targets for n in METRIC_NAME.findall(e)},
    }


def test_alert_rules_and_dashboard_use_only_exposed_metrics(client):
    exposed = exposed_names(client)
    for where, used in used_names().items():
        assert used, f"the {where} use no metric of the service"
        assert used <= exposed, f"the {where} use metrics the service lacks: {used - exposed}"


def test_a_renamed_metric_would_be_caught(client):
    exposed = exposed_names(client) - {"fraud_scoring_score_bucket"}
    assert any(not used <= exposed for used in used_names().values())


def test_traces_are_exported_only_when_an_endpoint_is_set(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(observability.tracer_from_environment(), trace.NoOpTracer)

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    sampled = observability.tracer_from_environment().sampler.get_description()
    assert f"TraceIdRatioBased{{{observability.TRACED_SHARE}}}" in sampled
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")  # OpenTelemetry's own setting wins
    assert observability.tracer_from_environment().sampler.get_description() == "AlwaysOnSampler"
