"""What the scoring service tells those who run it: Prometheus metrics and OpenTelemetry traces.

Metrics, at ``/metrics`` in Prometheus' text format:

- ``fraud_scoring_requests_total{endpoint, method, status}``: requests answered;
- ``fraud_scoring_request_duration_seconds{endpoint, method}``: their latency, a histogram;
- ``fraud_scoring_score``: the fraud probabilities given, a histogram (drift shows here first);
- ``fraud_scoring_unknown_accounts_total{endpoint}``: lookups that found no online features;
- ``fraud_scoring_model_info{version, alias}``: the model in use, always 1.

``endpoint`` is the route's template (``/features/{account_id}``), never the path itself, so
the number of series stays bounded whatever clients ask for.

Traces: one server span per request, with the PostgreSQL lookup as a child span. They are
exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` form) is
set, as OpenTelemetry's own settings have it; without it no span is made, at no cost. One
request in ten starting here is traced (``OTEL_TRACES_SAMPLER`` and ``_ARG`` change it): a
span costs little, but encoding and sending every one of them would hold Python's lock
often enough to slow the slowest requests. A caller's decision in ``traceparent`` wins.
``SERVING_OBSERVABILITY=off`` turns metrics and traces off (to measure what they cost).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from workbook import scoring, store

SERVICE_NAME = "fraud-scoring"
TRACED_SHARE = 0.1  # of the requests that start a trace here
PREFIX = "fraud_scoring"
# The budget of /score's p99 is 10 ms: buckets are dense around it.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20))
UNMATCHED = "unmatched"  # a request that no route took (its 404 names the path)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def enabled() -> bool:
    return os.environ.get("SERVING_OBSERVABILITY", "on").lower() not in {"off", "0", "false"}


class _ModelInfo:
    """``fraud_scoring_model_info``: read from the service when scraped, so never stale."""

    def __init__(self, model_in_use: Callable[[], tuple[str, str] | None]):
        self._model_in_use = model_in_use

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_model_info", "the model scoring now (always 1)", labels=["version", "alias"]
        )
        in_use = self._model_in_use()
        if in_use is not None:
            family.add_metric(list(in_use), 1)
        yield family


class Metrics:
    """The service's metrics, in a registry of their own (one per application)."""

    on = True

    def __init__(self, model_in_use: Callable[[], tuple[str, str] | None]):
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            f"{PREFIX}_requests",
            "requests answered, by endpoint (route template), method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "time from request to the end of the response, by endpoint and method",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._scores = Histogram(
            f"{PREFIX}_score",
            "fraud probability of each scored transaction",
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self._unknown = Counter(
            f"{PREFIX}_unknown_accounts",
            "lookups that found no online features for the account, by endpoint",
            ["endpoint"],
            registry=self.registry,
        )
        self.registry.register(_ModelInfo(model_in_use))

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, method, str(status)).inc()
        self._latency.labels(endpoint, method).observe(seconds)

    def scored(self, result: dict) -> None:
        self._scores.observe(result["fraud_probability"])
        if result["history"] == scoring.UNKNOWN_ACCOUNT:
            self.unknown("/score")

    def unknown(self, endpoint: str, n: int = 1) -> None:
        if n:
            self._unknown.labels(endpoint).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class NoMetrics(Metrics):
    """Metrics turned off: the same calls, nothing kept."""

    on = False

    def __init__(self):
        pass

    def request(self, endpoint, method, status, seconds) -> None:
        pass

    def scored(self, result) -> None:
        pass

    def unknown(self, endpoint, n=1) -> None:
        pass


def tracer_from_environment() -> Tracer:
    """A tracer exporting over OTLP/HTTP if OpenTelemetry's endpoint setting is given."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return trace.NoOpTracer()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sampler = None  # None: the one OTEL_TRACES_SAMPLER names
    if "OTEL_TRACES_SAMPLER" not in os.environ:
        sampler = ParentBased(TraceIdRatioBased(TRACED_SHARE))
    resource = Resource.create({"service.name": SERVICE_NAME})
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_* itself
    return provider.get_tracer("workbook.serving")


def instruments(
    model_in_use: Callable[[], tuple[str, str] | None], tracer: Tracer | None = None
) -> tuple[Metrics, Tracer]:
    """The service's metrics and tracer (``tracer`` replaces the one from the settings)."""
    if not enabled():
        return NoMetrics(), trace.NoOpTracer()
    return Metrics(model_in_use), tracer or tracer_from_environment()


def lookup_span(tracer: Tracer, accounts: int) -> AbstractContextManager:
    """The child span of one PostgreSQL lookup of the online features."""
    if isinstance(tracer, trace.NoOpTracer):
        return nullcontext()
    return tracer.start_as_current_span(
        f"SELECT {store.TABLE}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "postgresql",
            "db.operation.name": "SELECT",
            "db.collection.name": store.TABLE,
            "workbook.accounts": accounts,
        },
    )


class Observed:
    """ASGI middleware: a server span and the request metrics for every HTTP request."""

    def __init__(self, app, metrics: Metrics, tracer: Tracer):
        self.app = app
        self.metrics = metrics
        self.tracer = tracer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope["method"]
        status = 500  # what the client gets if the application raises
        started = time.perf_counter()

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self.tracer.start_as_current_span(
            method, context=propagate.extract(headers), kind=SpanKind.SERVER
        ) as span:
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                route = scope.get("route")
                endpoint = getattr(route, "path_format", UNMATCHED)
                self.metrics.request(endpoint, method, status, time.perf_counter() - started)
                if span.is_recording():
                    span.update_name(f"{method} {endpoint}")
                    span.set_attribute("http.request.method", method)
                    span.set_attribute("http.route", endpoint)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.StatusCode.ERROR)
