"""Online lookups and scoring: in-process against the feature store, and over HTTP.

In-process calls ``store.FeatureStore`` (the reader role's connection pool); HTTP calls the
scoring service (``workbook.serving``) started in its own process, with one keep-alive
connection and one request at a time, so the difference is what HTTP, JSON and the
framework add. Every series follows a warm-up of its own.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
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
}


def transactions_to_score(n: int) -> list[dict]:
    """Valid transactions of the day after the period the online features describe."""
    config = simulator.SimulationConfig.from_json(
        Path(lakehouse.location(names.SIMULATION_MANIFEST)).read_text()
    )
    frame, _labels = simulator.simulate(replace(config.following_days(1), n_transactions=n))
    return json.loads(frame.to_json(orient="records"))  # plain JSON types, as a client sends


def run(n: int = 5000, batches: int = 1000, http_batches: int = 1000, warmup: int = 300) -> dict:
    conn = store.connect()
    try:
        ids = store.read_all(conn)[names.ACCOUNT_ID].tolist()
    finally:
        conn.close()
    model = registry.load_scoring_model(names.CHAMPION)
    transactions = transactions_to_score(2000)
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

    figures = {name: common.percentiles(values, (50, 95, 99)) for name, values in series.items()}
    headline = {key: figures[name]["p99_ms"] for name, key in SERIES_TARGET.items()}
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
        },
    }


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
    ):
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
