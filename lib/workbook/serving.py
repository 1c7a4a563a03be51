"""The real-time scoring service: online features and fraud scores over HTTP.

Run it with ``python -m workbook.serving --host 127.0.0.1 --port 8000``, or beside a
notebook with ``launcher.start_service()``. It reads PostgreSQL as the read-only role
through a connection pool opened at startup, and scores with the model exported beside the
trained pipeline (``scoring.ScoringModel``), so a transaction gets the same score as in
batch or streaming. Handlers are plain functions: FastAPI runs them in its thread pool, so
the blocking database calls never stall the event loop. It imports no Spark: a process
that never starts a JVM starts fast and stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import threading
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Literal

import psycopg2.errors
from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model, field_validator
from starlette.concurrency import run_in_threadpool

from workbook import lakehouse, names, scoring, store
from workbook.config import MissingSettingError, load_dotenv
from workbook.contract import ACCOUNT_ID_PATTERN, KNOWN_CURRENCIES, MAX_AMOUNT, TEXT_LIMIT

MAX_BATCH = 100  # accounts per POST /features/batch: one query, a bounded answer


class Transaction(BaseModel):
    """A transaction to score: the event's fields, validated as ingestion validates them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    names.TRANSACTION_ID: "TX-0001",
                    names.TIMESTAMP: "2025-01-31T02:15:00Z",
                    names.ACCOUNT_ID: "ACC000042",
                    names.AMOUNT: 950.0,
                    names.CURRENCY: "EUR",
                    names.TRANSACTION_TYPE: "online",
                    names.MERCHANT_ID: "M000123",
                    names.CATEGORY: "electronics",
                }
            ]
        },
    )

    transaction_id: str = Field(min_length=1, max_length=TEXT_LIMIT)
    timestamp: AwareDatetime
    account_id: str = Field(pattern=ACCOUNT_ID_PATTERN)
    amount: float = Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True)
    currency: Literal[KNOWN_CURRENCIES]
    transaction_type: str | None = Field(None, max_length=TEXT_LIMIT)
    merchant_id: str | None = Field(None, max_length=TEXT_LIMIT)
    category: str | None = Field(None, max_length=TEXT_LIMIT)
    is_flagged: bool | None = None

    @field_validator(names.TIMESTAMP)
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
    inputs=(
        dict[str, float],
        Field(description=f"model inputs: {', '.join(names.NUMERIC_INPUTS)}"),
    ),
)
AccountFeatures = create_model(
    "AccountFeatures",
    **{names.ACCOUNT_ID: (str, ...), names.FEATURE_DATE: (date, ...)},
    **{
        c: ((int if c in names.COUNT_FEATURES else float) | None, ...)
        for c in names.FEATURE_COLUMNS
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
            names.TRANSACTION_ID: transaction.transaction_id,
            names.ACCOUNT_ID: transaction.account_id,
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
