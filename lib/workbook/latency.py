"""Latency series of the online path, in milliseconds: lookups and scores, in-process and HTTP.

Every series times one call at a time on randomly chosen inputs (seeded), so series taken
in-process and over HTTP differ only by what HTTP, JSON and the framework add. The HTTP
series hold one keep-alive connection, as a service's client would.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Sequence
from datetime import date
from urllib.parse import urlparse

import numpy as np

from workbook import names, scoring
from workbook.serving import MAX_BATCH
from workbook.store import FeatureStore


def timed(call: Callable, items: Sequence, n: int, seed: int = 0) -> np.ndarray:
    """Milliseconds of ``n`` calls of ``call`` on items chosen at random (with replacement)."""
    chosen = np.random.default_rng(seed).integers(0, len(items), n)
    out = np.empty(n)
    for i, k in enumerate(chosen):
        start = time.perf_counter_ns()
        call(items[k])
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


def _batches(account_ids: Sequence[str], batch: int, n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    ids = np.asarray(account_ids)
    return [[str(a) for a in rng.choice(ids, batch, replace=False)] for _ in range(n)]


# -- in-process ---------------------------------------------------------------------------------


def lookups(store: FeatureStore, account_ids: Sequence[str], n: int = 2000, seed: int = 0):
    """``n`` single-account lookups through the store's connection pool."""
    return timed(store.get_features, list(account_ids), n, seed)


def batch_lookups(
    store: FeatureStore, account_ids: Sequence[str], batch: int = MAX_BATCH, n=200, seed=0
):
    """``n`` lookups of ``batch`` distinct accounts each, in one query (``get_many``)."""
    return timed(store.get_many, _batches(account_ids, batch, n, seed), n, seed)


def scores(
    store: FeatureStore,
    model: scoring.ScoringModel,
    transactions: Sequence[dict],
    n: int = 2000,
    seed: int = 0,
):
    """``n`` scores as the service computes them (lookup, inputs, model), without HTTP."""

    def one(transaction: dict) -> None:
        account = store.get_features(transaction[names.ACCOUNT_ID])
        scoring.score_transaction(model, transaction, account)

    return timed(one, list(transactions), n, seed)


# -- over HTTP ----------------------------------------------------------------------------------


class HttpClient:
    """One keep-alive HTTP connection to the scoring service."""

    def __init__(self, base_url: str, timeout: float = 10.0):
        parsed = urlparse(base_url)
        self._conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)

    def call(self, method: str, path: str, body: bytes | None = None, ok=(200,)) -> bytes:
        self._conn.request(method, path, body, {"Content-Type": "application/json"})
        response = self._conn.getresponse()
        data = response.read()
        if response.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
        return data

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(value):
    """A transaction's field as JSON holds it: times as ISO text, numpy scalars as Python's."""
    if isinstance(value, date):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


def http_lookups(base_url: str, account_ids: Sequence[str], n: int = 2000, seed: int = 0):
    """``n`` GET /features/{account_id}; an unknown account (404) is an answer too."""
    with HttpClient(base_url) as client:
        return timed(
            lambda a: client.call("GET", f"/features/{a}", ok=(200, 404)),
            list(account_ids),
            n,
            seed,
        )


def http_batch_lookups(
    base_url: str, account_ids: Sequence[str], batch: int = MAX_BATCH, n: int = 200, seed=0
):
    """``n`` POST /features/batch of ``batch`` distinct accounts each."""
    bodies = [
        json.dumps({"account_ids": ids}).encode() for ids in _batches(account_ids, batch, n, seed)
    ]
    with HttpClient(base_url) as client:
        return timed(lambda b: client.call("POST", "/features/batch", b), bodies, n, seed)


def http_scores(base_url: str, transactions: Sequence[dict], n: int = 2000, seed: int = 0):
    """``n`` POST /score of randomly chosen transactions."""
    bodies = _score_bodies(transactions)
    with HttpClient(base_url) as client:
        return timed(lambda b: client.call("POST", "/score", b), bodies, n, seed)


def _score_bodies(transactions: Sequence[dict]) -> list[bytes]:
    """Each transaction as the JSON body a client would POST to /score."""
    return [json.dumps({k: _jsonable(v) for k, v in t.items()}).encode() for t in transactions]


def http_scores_side_by_side(
    base_urls: Sequence[str], transactions: Sequence[dict], n: int = 2000, seed: int = 0
) -> list[np.ndarray]:
    """``n`` POST /score to each service, the same transaction to each in turn.

    The services take turns request by request, the first one changing every time, so a
    noisy moment of the machine falls on all of them alike: their figures compare.
    """
    bodies = _score_bodies(transactions)
    chosen = np.random.default_rng(seed).integers(0, len(bodies), n)
    out = np.empty((len(base_urls), n))
    clients = [HttpClient(url) for url in base_urls]
    try:
        for i, k in enumerate(chosen):
            for j in np.roll(np.arange(len(clients)), i):
                start = time.perf_counter_ns()
                clients[j].call("POST", "/score", bodies[k])
                out[j, i] = (time.perf_counter_ns() - start) / 1e6
    finally:
        for client in clients:
            client.close()
    return list(out)
