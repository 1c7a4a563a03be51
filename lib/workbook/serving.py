"""The real-time scoring service: online features and fraud scores over HTTP.

Run it with ``python -m workbook.serving --host 127.0.0.1 --port 8000``, or from a notebook
with ``start_service()``. It reads PostgreSQL as the read-only role through a connection
pool opened at startup, and scores with the model exported beside the trained pipeline
(``scoring.ScoringModel``), so a transaction gets the same score as in batch or streaming.
Handlers are plain functions: FastAPI runs them in its thread pool, so the blocking
database calls never stall the event loop.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import numpy as np
import psycopg2.errors
from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model, field_validator
from starlette.concurrency import run_in_threadpool

from workbook import lakehouse, names, scoring, store
from workbook.config import MissingSettingError, get_settings, load_dotenv
from workbook.features import FEATURES_SCHEMA, NUMERIC_INPUTS
from workbook.ingest import MAX_AMOUNT

# The simulator's account ids: "ACC" and a zero-padded number. Anything else is refused
# before it reaches the database.
ACCOUNT_ID_PATTERN = r"^ACC[0-9]{6,9}$"
TEXT_LIMIT = 128
MAX_BATCH = 100  # accounts per POST /features/batch: one query, a bounded answer


class Transaction(BaseModel):
    """A transaction to score: the event's fields, validated as ingestion validates them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "transaction_id": "TX-0001",
                    "timestamp": "2025-01-31T02:15:00Z",
                    "account_id": "ACC000042",
                    "amount": 950.0,
                    "currency": "EUR",
                    "transaction_type": "online",
                    "merchant_id": "M000123",
                    "category": "electronics",
                }
            ]
        },
    )

    transaction_id: str = Field(min_length=1, max_length=TEXT_LIMIT)
    timestamp: AwareDatetime
    account_id: str = Field(pattern=ACCOUNT_ID_PATTERN)
    amount: float = Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True)
    currency: Literal[names.KNOWN_CURRENCIES]
    transaction_type: str | None = Field(None, max_length=TEXT_LIMIT)
    merchant_id: str | None = Field(None, max_length=TEXT_LIMIT)
    category: str | None = Field(None, max_length=TEXT_LIMIT)
    is_flagged: bool | None = None

    @field_validator("timestamp")
    @classmethod
    def not_in_the_future(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC):
            raise ValueError("the timestamp is in the future")  # ingestion refuses these too
        return value


Score = create_model(
    "Score",
    transaction_id=(str, ...),
    account_id=(str, ...),
    fraud_probability=(float, ...),
    is_fraud=(bool, Field(description="fraud_probability >= threshold")),
    threshold=(float, ...),
    model_version=(str, ...),
    history=(
        Literal[scoring.PREVIOUS_DAY, scoring.UNKNOWN_ACCOUNT, scoring.STALE],
        Field(description="which account history the inputs were built from"),
    ),
    features_date=(date | None, ...),
    note=(str | None, None),
    inputs=(dict[str, float], Field(description=f"model inputs: {', '.join(NUMERIC_INPUTS)}")),
)
_PYTHON_TYPES = {"string": str, "date": date, "bigint": int, "double": float}
AccountFeatures = create_model(
    "AccountFeatures",
    **{
        (store.DATE_COLUMN if f.name == names.TRANSACTION_DATE else f.name): (
            _PYTHON_TYPES[f.dataType.simpleString()] | None
            if f.nullable
            else _PYTHON_TYPES[f.dataType.simpleString()],
            ...,
        )
        for f in FEATURES_SCHEMA
    },
)
AccountId = Annotated[str, PathParam(pattern=ACCOUNT_ID_PATTERN, examples=["ACC000042"])]


class AccountIds(BaseModel):
    """Up to ``MAX_BATCH`` accounts whose features to look up at once."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"account_ids": ["ACC000042", "ACC000043"]}]},
    )

    account_ids: list[Annotated[str, Field(pattern=ACCOUNT_ID_PATTERN)]] = Field(
        min_length=1, max_length=MAX_BATCH
    )


FeaturesBatch = create_model(
    "FeaturesBatch",
    features=(list[AccountFeatures], Field(description="known accounts, in the order asked")),
    unknown=(list[str], Field(description="accounts with no online features")),
)


class Service:
    """What the handlers share: the reader's connection pool and the exported model.

    Either may be missing at startup (PostgreSQL not up yet, no model trained yet); the
    service starts anyway, answers 503 with the reason, and retries on the next request.
    """

    def __init__(self, model_location: str | None = None, conninfo: str | None = None):
        self.model_location = model_location or scoring.artifact_location(
            lakehouse.location(names.MODEL)
        )
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._store: store.FeatureStore | None = None
        self._model: scoring.ScoringModel | None = None

    def open(self) -> None:
        for attempt in (self.store, self.model):
            with contextlib.suppress(HTTPException):  # reported by /health, retried per request
                attempt()

    def store(self) -> store.FeatureStore:
        if self._store is not None:  # the usual case: no lock on the request path
            return self._store
        with self._lock:
            if self._store is None:
                try:
                    self._store = store.FeatureStore(store.READER, conninfo=self._conninfo)
                except (store.StoreUnavailableError, MissingSettingError) as error:
                    raise HTTPException(503, str(error)) from None
            return self._store

    def model(self) -> scoring.ScoringModel:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                try:
                    self._model = scoring.ScoringModel.load(self.model_location)
                except FileNotFoundError:
                    raise HTTPException(
                        503,
                        f"no exported model at {lakehouse.shown(self.model_location)}: "
                        "run notebook 03_train first",
                    ) from None
            return self._model

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def create_app(model_location: str | None = None, conninfo: str | None = None) -> FastAPI:
    """The application; ``conninfo`` overrides the reader's connection (tests use it)."""
    service = Service(model_location, conninfo)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(service.open)
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="Card-fraud scoring",
        summary="Online account features and real-time fraud scores",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    def invalid_request(request, error):
        # The default handler echoes the input, which fails to encode when it holds NaN.
        return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))}, status_code=422)

    @app.exception_handler(store.StoreUnavailableError)
    def store_unavailable(request, error):
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(psycopg2.errors.UndefinedTable)
    def no_table(request, error):
        detail = f"the online table {store.TABLE} does not exist yet: run 05_feature_store"
        return JSONResponse({"detail": detail}, status_code=503)

    @app.get("/health")
    def health() -> dict:
        """200 when PostgreSQL answers; 503 with the reason when it does not."""
        service.store().ping()
        try:
            model = service.model().version
        except HTTPException as missing:
            model = f"unavailable: {missing.detail}"
        return {"status": "ok", "postgres": "ok", "model_version": model}

    @app.get(
        "/features/{account_id}",
        response_model=AccountFeatures,
        responses={404: {"description": "unknown account"}},
    )
    def features(account_id: AccountId):
        """The account's latest online features."""
        row = service.store().get_features(account_id)
        if row is None:
            raise HTTPException(404, f"no online features for account {account_id}")
        return row

    @app.post("/features/batch", response_model=FeaturesBatch)
    def features_batch(request: AccountIds):
        """The latest online features of several accounts, in one query."""
        wanted = list(dict.fromkeys(request.account_ids))  # each once, in the order asked
        rows = service.store().get_many(wanted)
        return {
            "features": [rows[a] for a in wanted if a in rows],
            "unknown": [a for a in wanted if a not in rows],
        }

    @app.post("/score", response_model=Score, responses={409: {"description": "features too new"}})
    def score(transaction: Transaction):
        """Fraud probability and decision, from the transaction and its account's features."""
        model = service.model()
        row = service.store().get_features(transaction.account_id)
        event = transaction.model_dump()
        try:
            result = scoring.score_transaction(model, event, row)
        except scoring.PointInTimeError as error:
            raise HTTPException(409, str(error)) from None
        return {
            "transaction_id": transaction.transaction_id,
            "account_id": transaction.account_id,
            **result,
        }

    return app


def _finite(value):
    """JSON-safe: non-finite floats (which JSON cannot hold) become their text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


# -- running it beside a notebook --------------------------------------------------------------


class RunningService:
    """A service started by ``start_service``: its base URL, and ``stop()``."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (the pool closes, the embedded server's handle is released)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"RunningService({self.url}, pid {self.process.pid}, {state})"


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_service(
    host: str = "127.0.0.1",
    port: int = 0,
    model_location: str | None = None,
    timeout: float = 60.0,
) -> RunningService:
    """Start the service in its own process and wait until /health answers 200.

    Its own process, so its request handling does not compete with the notebook for the
    interpreter lock. ``port=0`` picks a free port. Its log goes to
    ``<lakehouse>/_logs/serving.log``. Raises with the service's reason if it cannot serve.
    """
    port = port or _free_port(host)
    log_path = get_settings().lakehouse / "_logs" / "serving.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "workbook.serving", "--host", host, "--port", str(port)]
    if model_location:
        command += ["--model", model_location]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    running = RunningService(process, f"http://{host}:{port}", log_path)
    atexit.register(running.stop)  # a kernel that exits does not leave the service behind
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError("the scoring service exited:\n" + "\n".join(tail))
        try:
            status, body = _request(running.url, "GET", "/health")
        except OSError:
            time.sleep(0.2)
            continue
        if status == 200:
            return running
        running.stop()
        raise store.StoreUnavailableError(json.loads(body).get("detail", body.decode()))
    running.stop()
    raise TimeoutError(f"the scoring service did not answer within {timeout:.0f} s; see {log_path}")


def _request(base_url: str, method: str, path: str, body: bytes | None = None):
    parsed = urlparse(base_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- latency ------------------------------------------------------------------------------------


def _timed(call, items: Sequence, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(items), n)
    out = np.empty(n)
    for i, k in enumerate(chosen):
        start = time.perf_counter_ns()
        call(items[k])
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


class _Client:
    """One keep-alive HTTP connection, as a service's client would hold."""

    def __init__(self, base_url: str):
        parsed = urlparse(base_url)
        self._conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)

    def call(self, method: str, path: str, body: bytes | None = None, ok=(200,)) -> bytes:
        self._conn.request(method, path, body, {"Content-Type": "application/json"})
        response = self._conn.getresponse()
        data = response.read()
        if response.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
        return data

    def get(self, path: str) -> bytes:
        return self.call("GET", path, ok=(200, 404))  # an unknown account is an answer too

    def close(self) -> None:
        self._conn.close()


def http_latencies_ms(
    base_url: str, account_ids: Sequence[str], n: int = 2000, seed: int = 0
) -> np.ndarray:
    """Time ``n`` GET /features lookups of randomly chosen accounts, in milliseconds.

    The HTTP twin of ``store.lookup_latencies_ms``: one keep-alive connection, one request
    at a time, so the difference is what HTTP, JSON and the framework add.
    """
    client = _Client(base_url)
    try:
        return _timed(lambda a: client.get(f"/features/{a}"), list(account_ids), n, seed)
    finally:
        client.close()


def http_batch_latencies_ms(
    base_url: str, account_ids: Sequence[str], batch: int = MAX_BATCH, n: int = 200, seed: int = 0
) -> np.ndarray:
    """Time ``n`` POST /features/batch lookups of ``batch`` randomly chosen accounts each."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(account_ids)
    bodies = [
        json.dumps({"account_ids": rng.choice(ids, batch, replace=False).tolist()}).encode()
        for _ in range(n)
    ]
    client = _Client(base_url)
    try:
        return _timed(lambda b: client.call("POST", "/features/batch", b), bodies, n, seed)
    finally:
        client.close()


def _jsonable(value):
    """A transaction's field as JSON holds it: times as ISO text, numpy scalars as Python's."""
    if isinstance(value, date):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


def http_score_latencies_ms(
    base_url: str, transactions: Sequence[dict], n: int = 2000, seed: int = 0
) -> np.ndarray:
    """Time ``n`` POST /score calls on randomly chosen transactions, in milliseconds."""
    bodies = [json.dumps({k: _jsonable(v) for k, v in t.items()}).encode() for t in transactions]
    client = _Client(base_url)
    try:
        return _timed(lambda b: client.call("POST", "/score", b), bodies, n, seed)
    finally:
        client.close()


def score_latencies_ms(
    online: store.FeatureStore,
    model: scoring.ScoringModel,
    transactions: Sequence[dict],
    n: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """The in-process twin of ``http_score_latencies_ms``: lookup, inputs and score, no HTTP."""

    def one(transaction: dict) -> None:
        scoring.score_transaction(
            model, transaction, online.get_features(transaction[names.ACCOUNT_ID])
        )

    return _timed(one, list(transactions), n, seed)


def _exit_normally(signum, frame) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    load_dotenv()
    parser = argparse.ArgumentParser(
        prog="python -m workbook.serving", description="Serve online features and fraud scores."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SERVING_PORT", 8000)))
    parser.add_argument("--model", help="the scoring artifact (default: beside the trained model)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again, which would
    # skip atexit handlers; the embedded PostgreSQL counts its users with them.
    signal.signal(signal.SIGTERM, _exit_normally)
    uvicorn.run(
        create_app(args.model),
        host=args.host,
        port=args.port,
        access_log=args.access_log,
        log_level="info",
    )


if __name__ == "__main__":
    main()
