"""Online lookups and scoring: in-process against the feature store, and over HTTP.

In-process calls ``store.FeatureStore`` (the reader role's connection pool); HTTP calls the
scoring service (``workbook.serving``) started in its own process, with one keep-alive
connection and one request at a time, so the difference is what HTTP, JSON and the
framework add. Every series follows a warm-up of its own.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from benchmarks import common
from workbook import lakehouse, latency, launcher, names, registry, scoring, simulator, store

BATCH = 100
TARGETS_MS = {"lookup_p99_ms": 2.0, "lookup_http_p99_ms": 5.0, "score_p99_ms": 10.0}
SERIES_TARGET = {
    "in_process_one_key": "lookup_p99_ms",
    "http_one_key": "lookup_http_p99_ms",
    "http_score": "score_p99_ms",
}
LABELS = {
    "in_process_one_key": "lookup 1 key in-process",
    "in_process_100_keys": "lookup 100 keys in-process (get_many)",
    "http_one_key": "lookup 1 key HTTP",
    "http_100_keys": "lookup 100 keys HTTP (POST /features/batch)",
    "in_process_score": "score in-process",
    "http_score": "score HTTP POST /score",
    "http_score_unobserved": "score HTTP, unobserved",
    "http_score_observed": "score HTTP, observed (1 in 10 traced)",
    "http_score_every_request_traced": "score HTTP, every request traced",
}


def transactions_to_score(n: int, feature_day) -> list[dict]:
    """Valid transactions of the day after the one the online features describe."""
    config = simulator.SimulationConfig.from_json(
        Path(lakehouse.location(names.SIMULATION_MANIFEST)).read_text()
    )
    day = config.one_day(config.index_of(feature_day) + 1)
    frame, _labels = simulator.simulate(replace(day, n_transactions=n))
    return json.loads(frame.to_json(orient="records"))  # plain JSON types, as a client sends


def run(n: int = 5000, batches: int = 1000, http_batches: int = 1000, warmup: int = 300) -> dict:
    online_rows = store.read_all()
    ids = online_rows[names.ACCOUNT_ID].tolist()
    model = registry.load_scoring_model(names.CHAMPION)
    transactions = transactions_to_score(2000, online_rows[names.FEATURE_DATE].max())
    series: dict[str, np.ndarray] = {}

    def keep(name: str, values: np.ndarray) -> None:
        series[name] = values
        figures = common.percentiles(values)
        common.show(f"{LABELS[name]} p50", figures["p50_ms"], "ms")
        target = ("<=", TARGETS_MS[SERIES_TARGET[name]]) if name in SERIES_TARGET else None
        common.show(f"{LABELS[name]} p99", figures["p99_ms"], "ms", target)

    common.progress(f"lookup: in-process, {len(ids):,} accounts online, {n:,} requests per series")
    with store.FeatureStore() as online:
        latency.lookups(online, ids, n=warmup)
        keep("in_process_one_key", latency.lookups(online, ids, n=n, seed=1))
        latency.batch_lookups(online, ids, BATCH, n=max(10, warmup // 10))
        keep("in_process_100_keys", latency.batch_lookups(online, ids, BATCH, batches, seed=1))
        latency.scores(online, model, transactions, n=warmup)
        keep("in_process_score", latency.scores(online, model, transactions, n=n, seed=1))
        history = Counter(
            scoring.score_transaction(model, t, online.get_features(t[names.ACCOUNT_ID]))["history"]
            for t in transactions[:500]
        )

    common.progress("lookup: over HTTP (the scoring service in its own process)")
    with launcher.start_service() as service:
        latency.http_lookups(service.url, ids, n=warmup)
        keep("http_one_key", latency.http_lookups(service.url, ids, n=n, seed=1))
        latency.http_batch_lookups(service.url, ids, BATCH, n=max(10, warmup // 10))
        keep(
            "http_100_keys",
            latency.http_batch_lookups(service.url, ids, BATCH, n=http_batches, seed=1),
        )
        latency.http_scores(service.url, transactions, n=warmup)
        keep("http_score", latency.http_scores(service.url, transactions, n=n, seed=1))

    common.progress("lookup: /score with and without metrics and traces, side by side")
    observed, exported = observability_cost(transactions, n, warmup)
    series.update(observed)
    for name in observed:
        common.show(f"{LABELS[name]} p99", common.percentiles(series[name])["p99_ms"], "ms")
    p99 = {name: np.percentile(values, 99) for name, values in observed.items()}
    overhead = float(p99["http_score_observed"] / p99["http_score_unobserved"] - 1)
    common.show("observability overhead on /score p99", 100 * overhead, "%", ("<=", 10.0))

    figures = {name: common.percentiles(values, (50, 95, 99)) for name, values in series.items()}
    headline = {key: figures[name]["p99_ms"] for name, key in SERIES_TARGET.items()}
    headline["observability_overhead_p99_share"] = round(overhead, 4)
    return {
        "headline": headline,
        "figures": figures,
        "cdf_ms": {
            name: [round(float(v), 4) for v in np.percentile(values, np.linspace(0, 100, 201))]
            for name, values in series.items()
        },
        "conditions": {
            "online_accounts": len(ids),
            "requests_per_series": n,
            "batches_in_process": batches,
            "batches_http": http_batches,
            "warmup_requests": warmup,
            "http_batch": f"POST /features/batch with {BATCH} distinct accounts",
            "client": "one connection, one request at a time, in the benchmark's process",
            "score_history_of_500_transactions": dict(history),
            "observability": (
                "three services taking turns request by request: SERVING_OBSERVABILITY=off; "
                "metrics and 1 request in 10 traced; every request traced. Spans exported "
                f"over OTLP/HTTP to a local sink ({exported} exports received)"
            ),
        },
    }


@contextmanager
def otlp_sink():
    """A local OTLP/HTTP endpoint that accepts span exports and counts them."""
    received = []

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(len(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def observability_cost(transactions, n: int, warmup: int) -> tuple[dict[str, np.ndarray], int]:
    """/score latencies of three services side by side, request by request: without metrics
    and traces, with them (one request in ten traced, the default), and tracing every one."""
    with otlp_sink() as (endpoint, received):
        exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        settings = {
            "http_score_unobserved": {"SERVING_OBSERVABILITY": "off"},
            "http_score_observed": exporting,
            "http_score_every_request_traced": {
                **exporting,
                "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            },
        }
        with ExitStack() as stack:
            urls = [
                stack.enter_context(launcher.start_service(env=env)).url
                for env in settings.values()
            ]
            latency.http_scores_side_by_side(urls, transactions, n=warmup)
            timings = latency.http_scores_side_by_side(urls, transactions, n=n, seed=1)
        exported = len(received)
    if not exported:
        raise RuntimeError("the observed services exported no spans: tracing was not on")
    return dict(zip(settings, timings, strict=True)), exported


def plot(section: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    shares = np.linspace(0, 1, 201)
    cdf = section["cdf_ms"]
    fig, (single, batch) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, colour in (
        ("in_process_one_key", "tab:green"),
        ("http_one_key", "tab:blue"),
        ("in_process_score", "tab:olive"),
        ("http_score", "tab:red"),
        ("http_score_unobserved", "tab:gray"),
        ("http_score_observed", "tab:purple"),
        ("http_score_every_request_traced", "tab:pink"),
    ):
        if name not in cdf:  # results from before the observability series
            continue
        single.plot(cdf[name], shares, label=name.replace("_", " "), color=colour)
    for name, colour in (("in_process_100_keys", "tab:green"), ("http_100_keys", "tab:blue")):
        batch.plot(cdf[name], shares, label=name.replace("_", " "), color=colour)
    for ax, title in ((single, "One request"), (batch, "A batch of 100 keys")):
        ax.axhline(0.99, color="grey", linestyle=":")
        ax.set(title=title, xlabel="ms (log)", ylabel="share of requests", xscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
