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
import logging
import math
import os
import signal
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import date
from typing import Annotated, Literal

import psycopg2.errors
from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from workbook import contract, intake, names, observability, scoring, store
from workbook.config import MissingSettingError, load_dotenv
from workbook.contract import MAX_AMOUNT
from workbook.services import ServiceUnavailableError

MAX_BATCH = 100  # accounts per POST /features/batch: one query, a bounded answer
log = logging.getLogger("workbook.serving")


def _instant(text: str) -> str:
    """Refuse a timestamp as the contract refuses it (the pattern has checked its form)."""
    refused = contract.timestamp_reason(text)
    if refused is not None:
        raise ValueError(f"{refused}: {contract.REFUSES[refused]}")
    return text


def _field_type(field: contract.EventField):
    """The pydantic type of a contract field: strict, so JSON types are never converted."""
    if field.kind == contract.NUMBER:
        return Annotated[float, Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True)]
    if field.kind == contract.BOOLEAN:
        return Annotated[bool, Field(strict=True)]
    if field.kind == contract.TIMESTAMP:
        pattern = f"^(?:{contract.TIMESTAMP_PATTERN})$"
        return Annotated[str, Field(pattern=pattern, strict=True), AfterValidator(_instant)]
    if field.choices:
        return Literal[field.choices]
    return Annotated[str, Field(pattern=f"^(?:{field.pattern})$", strict=True)]


EXAMPLE_EVENT = {
    names.TRANSACTION_ID: "TX-0001",
    names.TIMESTAMP: "2025-01-31T02:15:00Z",
    names.ACCOUNT_ID: "ACC000042",
    names.AMOUNT: 950.0,
    names.CURRENCY: "EUR",
    names.TRANSACTION_TYPE: "online",
    names.MERCHANT_ID: "M000123",
    names.CATEGORY: "electronics",
}
# A transaction event, as the contract has it: the same fields, types and formats.
Transaction = create_model(
    "Transaction",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_EVENT]}),
    __doc__="A transaction event, validated as ingestion validates it (workbook.contract).",
    **{
        f.name: (_field_type(f), Field(description=f.description))
        if f.required
        else (_field_type(f) | None, Field(None, description=f.description))
        for f in contract.FIELDS
    },
)


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
ACCOUNT_ID_PATTERN = f"^(?:{contract.BY_NAME[names.ACCOUNT_ID].pattern})$"


class AccountIdConvertor(Convertor):
    """A path segment that is an account id: anything else (e.g. ``batch``) is not this route."""

    regex = contract.BY_NAME[names.ACCOUNT_ID].pattern

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("account_id", AccountIdConvertor())
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


Problem = create_model("Problem", detail=(str, Field(description="what went wrong, in words")))
EventOutcome = create_model(
    "EventOutcome",
    index=(int, Field(description="the event's place in the batch, from 0")),
    transaction_id=(str | None, ...),
    accepted=(bool, ...),
    reason=(str | None, Field(description="the contract's reason, when refused")),
)
Intake = create_model(
    "Intake",
    accepted=(int, ...),
    refused=(int, ...),
    events=(list[EventOutcome], Field(description="one per event, in the order sent")),
)


def _errors(*statuses: int) -> dict:
    """OpenAPI responses for error statuses, each with the Problem body."""
    meaning = {
        400: "the body is not UTF-8 JSON",
        404: "unknown account",
        409: "the account's features are newer than the transaction",
        413: "the body is too large",
        422: "the request does not follow the schema",
        503: "a service it needs is down (the message names it and how to start it)",
    }
    return {s: {"model": Problem, "description": meaning[s]} for s in statuses}


# Any items: each event is judged on its own, by the contract (the Transaction schema), and
# refused with its reason in the answer; only a body that is not such an array is a 4xx.
BATCH_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "maxItems": intake.MAX_EVENTS,
    "items": {"description": "a transaction event (see Transaction), judged on its own"},
    "examples": [[EXAMPLE_EVENT]],
}


class Service:
    """What the handlers share: the reader's connection pool and the model in use.

    The model is the registry's champion (``registry.load_scoring_model``), or a fixed
    scoring artifact when ``model_location`` is given. Either the pool or the model may be
    missing at startup (PostgreSQL not up yet, no model trained yet); the service starts
    anyway, answers 503 with the reason, and retries on the next request.

    A watcher asks the registry every ``poll_seconds`` which version carries the alias; a
    new one is loaded whole, then swapped in with one assignment, so a request scores with
    either the old model or the new one, never with half of one.
    """

    def __init__(
        self,
        model_location: str | None = None,
        conninfo: str | None = None,
        alias: str = names.CHAMPION,
        poll_seconds: float | None = None,
    ):
        self.model_location = model_location
        self.alias = None if model_location else alias
        self.poll_seconds = poll_seconds or float(os.environ.get("SERVING_MODEL_POLL_SECONDS", 10))
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._store: store.FeatureStore | None = None
        self._model: scoring.ScoringModel | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._edge: intake.Edge | None = None

    def open(self) -> None:
        for attempt in (self.store, self.model):
            with contextlib.suppress(HTTPException):  # reported by /health, retried per request
                attempt()
        if self.alias is not None:
            self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._watcher.start()

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
        model = self._model  # one read: the watcher may swap it at any time
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> scoring.ScoringModel:
        if self.model_location is not None:
            try:
                return scoring.ScoringModel.load(self.model_location)
            except FileNotFoundError:
                raise HTTPException(503, f"no scoring artifact at {self.model_location}") from None
        from workbook import registry  # reads the registry without MLflow's client

        try:
            return registry.load_scoring_model(self.alias)
        except (registry.AliasNotFoundError, ServiceUnavailableError, MissingSettingError) as error:
            raise HTTPException(503, str(error)) from None

    def refresh(self) -> bool:
        """Load the version that carries the alias now, if it is not the one in use."""
        from workbook import registry

        current = self._model
        wanted = str(registry.alias_version(self.alias).version)
        if current is not None and current.version == wanted:
            return False
        loaded = registry.load_scoring_model(self.alias)
        self._model = loaded
        log.info("model %s@%s: now version %s", registry.MODEL_NAME, self.alias, loaded.version)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as error:  # the registry is down or the alias gone: keep serving
                log.warning("model watcher: %s", error)

    def model_in_use(self) -> tuple[str, str] | None:
        """The version scoring now and what chose it (the alias, or a fixed artifact)."""
        model = self._model
        return None if model is None else (model.version, self.alias or "fixed")

    def take_in(self, events: list) -> list[intake.Outcome]:
        """Judge a batch by the contract and send its accepted events on (``intake.Edge``)."""
        with self._lock:
            if self._edge is None:
                self._edge = intake.Edge()
        try:
            return self._edge.take_in(events)
        except ServiceUnavailableError as error:  # the broker is down: named, with the fix
            raise HTTPException(503, str(error)) from None

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def create_app(
    model_location: str | None = None,
    conninfo: str | None = None,
    poll_seconds: float | None = None,
    tracer: observability.Tracer | None = None,
) -> FastAPI:
    """The application; ``conninfo`` overrides the reader's connection (tests use it).

    Without ``model_location`` the model is the registry's champion, followed as it moves.
    ``tracer`` replaces the one OpenTelemetry's settings give (``observability``).
    """
    service = Service(model_location, conninfo, poll_seconds=poll_seconds)
    metrics, tracer = observability.instruments(service.model_in_use, tracer)

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
    if metrics.on:
        app.add_middleware(observability.Observed, metrics=metrics, tracer=tracer)

        @app.get("/metrics", include_in_schema=False)
        def prometheus_metrics() -> Response:
            """Prometheus' scrape target (see ``workbook.observability``)."""
            return Response(metrics.exposition(), media_type=observability.CONTENT_TYPE)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request, error):
        # The default handler echoes the input, which fails to encode when it holds NaN.
        return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def not_found(request, error):
        if error.status_code == 404 and error.detail == "Not Found":  # no route matched
            path = request.url.path
            detail = f"no such path: {path}"
            if path.startswith("/features/"):
                detail = f"{path[10:]!r} is not an account id ('ACC' and 6 to 9 digits)"
            return JSONResponse({"detail": detail}, status_code=404)
        return await http_exception_handler(request, error)

    @app.exception_handler(store.StoreUnavailableError)
    def store_unavailable(request, error):
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(psycopg2.errors.UndefinedTable)
    def no_table(request, error):
        detail = f"the online table {store.TABLE} does not exist yet: run 05_feature_store"
        return JSONResponse({"detail": detail}, status_code=503)

    @app.post(
        "/transactions",
        status_code=202,
        response_model=Intake,
        responses=_errors(400, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": BATCH_SCHEMA}},
            }
        },
    )
    async def transactions(request: Request):
        """Take in a batch of transaction events (the ingestion edge, in front of the topic).

        Each event is accepted or refused with the contract's reason; accepted events go to
        the transactions topic on the stack, or land as a file locally, for 01's ingestion.
        The same batch sent again adds nothing to raw.
        """
        try:
            events = intake.read_batch(await request.body())
        except intake.BadBatch as error:
            return JSONResponse({"detail": str(error)}, status_code=error.status)
        outcomes = await run_in_threadpool(service.take_in, events)
        refused = sum(o.reason is not None for o in outcomes)
        return {
            "accepted": len(outcomes) - refused,
            "refused": refused,
            "events": [{**asdict(o), "accepted": o.reason is None} for o in outcomes],
        }

    @app.get("/health", responses=_errors(503))
    def health() -> dict:
        """200 when PostgreSQL answers; 503 with the reason when it does not."""
        service.store().ping()
        try:
            model = service.model().version
        except HTTPException as missing:
            model = f"unavailable: {missing.detail}"
        return {
            "status": "ok",
            "postgres": "ok",
            "model_version": model,
            "model_alias": service.alias,
        }

    @app.post("/features/batch", response_model=FeaturesBatch, responses=_errors(400, 503))
    def features_batch(request: AccountIds):
        """The latest online features of several accounts, in one query."""
        wanted = list(dict.fromkeys(request.account_ids))  # each once, in the order asked
        with observability.lookup_span(tracer, len(wanted)):
            rows = service.store().get_many(wanted)
        unknown = [a for a in wanted if a not in rows]
        metrics.unknown("/features/batch", len(unknown))
        return {"features": [rows[a] for a in wanted if a in rows], "unknown": unknown}

    @app.get(
        "/features/{account_id:account_id}",
        response_model=AccountFeatures,
        responses=_errors(404, 503),
    )
    def features(account_id: AccountId):
        """The account's latest online features."""
        with observability.lookup_span(tracer, 1):
            row = service.store().get_features(account_id)
        if row is None:
            metrics.unknown("/features/{account_id}")
            raise HTTPException(404, f"no online features for account {account_id}")
        return row

    @app.post("/score", response_model=Score, responses=_errors(400, 409, 503))
    def score(transaction: Transaction):
        """Fraud probability and decision, from the transaction and its account's features."""
        model = service.model()
        with observability.lookup_span(tracer, 1):
            row = service.store().get_features(transaction.account_id)
        event = transaction.model_dump()
        try:
            result = scoring.score_transaction(model, event, row)
        except scoring.PointInTimeError as error:
            raise HTTPException(409, str(error)) from None
        metrics.scored(result)
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
    parser.add_argument(
        "--model",
        help="a fixed scoring artifact (scoring.json) instead of the registry's champion",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again: exit with
    # status 0 instead, after the atexit handlers, as a stop asked for is not a failure.
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
