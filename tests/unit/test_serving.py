"""The scoring service against a real (embedded) PostgreSQL with materialized rows."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from psycopg2.extensions import parse_dsn

from workbook import (
    contract,
    lakehouse,
    latency,
    launcher,
    names,
    scoring,
    serving,
    simulator,
    store,
)
from workbook.names import FEATURE_COLUMNS, NUMERIC_INPUTS

with warnings.catch_warnings():
    # Starlette's test client now prefers the httpx2 fork and warns on httpx, which works.
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.postgres

FEATURE_DAY = date(2025, 1, 30)
ACCOUNTS = [f"ACC{i:06d}" for i in range(5)]
UNKNOWN = "ACC999999"


def latest_rows() -> pd.DataFrame:
    rows = []
    for i, account in enumerate(ACCOUNTS):
        row = {c: (i + 1) if c in names.COUNT_FEATURES else 10.0 * (i + 1) for c in FEATURE_COLUMNS}
        row["daily_average_amount"] = None if i == 0 else row["daily_average_amount"]
        rows.append({names.ACCOUNT_ID: account, names.TRANSACTION_DATE: FEATURE_DAY, **row})
    return pd.DataFrame(rows)


def artifact() -> dict:
    """A model in the exported format: amounts, night and risky categories raise the score."""
    categories = sorted(simulator.CATEGORIES)
    types = sorted(simulator.TRANSACTION_TYPES)
    # One-hot widths under handleInvalid="keep" and dropLast: one slot per label plus one.
    width = len(NUMERIC_INPUTS) + len(categories) + 1 + len(types) + 1
    weights = {"amount_log": 0.9, "amount_vs_30d_avg": 1.2, "is_night": 1.5, "txn_count_7d": -0.1}
    params = {
        "format": scoring.ARTIFACT_FORMAT,
        "indexers": [
            {"input": c, "output": f"{c}_index", "labels": labels, "handle_invalid": "keep"}
            for c, labels in ((names.CATEGORY, categories), (names.TRANSACTION_TYPE, types))
        ],
        "encoders": [
            {
                "input": f"{c}_index",
                "output": f"{c}_onehot",
                "category_size": len(labels) + 1,
                "drop_last": True,
                "handle_invalid": "keep",
            }
            for c, labels in ((names.CATEGORY, categories), (names.TRANSACTION_TYPE, types))
        ],
        "assembler": {
            "inputs": [*NUMERIC_INPUTS, "category_onehot", "transaction_type_onehot"],
            "handle_invalid": "error",
        },
        "scaler": {
            "with_mean": True,
            "with_std": True,
            "mean": [3.0] + [0.0] * (width - 1),
            # The indexers' extra slot for unseen values was empty in training: std 0.
            "std": [1.0] * (width - 1) + [0.0],
        },
        "logistic_regression": {
            "coefficients": [weights.get(c, 0.0) for c in NUMERIC_INPUTS]
            + [1.0 if c in simulator.RISKY_CATEGORIES else 0.0 for c in [*categories, "?"]]
            + [0.5 if t == "online" else 0.0 for t in [*types, "?"]],
            "intercept": -3.0,
        },
        "threshold": 0.5,
    }
    return {"model_version": scoring._version(params), **params}


def online_rows_and_model(tmp_path_factory) -> Path:
    """The online table holding ``latest_rows`` only, and the model file: a service to test."""
    conn = store.connect()
    store.create_tables(conn)
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {store.TABLE}")
    store.materialize(conn, latest_rows())
    conn.close()
    path = tmp_path_factory.mktemp("model") / scoring.ARTIFACT_FILE
    path.write_text(json.dumps(artifact()))
    return path


@pytest.fixture(scope="module")
def materialized():
    conn = store.connect()
    store.create_tables(conn)
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {store.TABLE}")
    store.materialize(conn, latest_rows())
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / scoring.ARTIFACT_FILE
    path.write_text(json.dumps(artifact()))
    return path


@pytest.fixture(scope="module")
def client(materialized, model_file):
    with TestClient(serving.create_app(str(model_file))) as test_client:
        yield test_client


def transaction(**changes) -> dict:
    event = {
        "transaction_id": "TX-1",
        "timestamp": "2025-01-31T02:15:00Z",
        "account_id": "ACC000003",
        "amount": 950.0,
        "currency": "EUR",
        "transaction_type": "online",
        "merchant_id": "M000123",
        "category": "electronics",
    }
    return {**event, **changes}


def online_row(account: str) -> dict:
    with store.FeatureStore() as online:
        return online.get_features(account)


# -- health, schema, roles ---------------------------------------------------------------------


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "postgres": "ok",
        "model_version": artifact()["model_version"],
        "model_alias": None,  # a fixed artifact, not the registry's
    }


def test_openapi_schema_documents_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    paths = {"/health", "/features/{account_id}", "/features/batch", "/score", "/transactions"}
    assert paths <= set(schema["paths"])
    parameter = schema["paths"]["/features/{account_id}"]["get"]["parameters"][0]
    assert parameter["schema"]["pattern"] == f"^(?:{contract.BY_NAME['account_id'].pattern})$"
    assert "Transaction" in schema["components"]["schemas"]


def test_handlers_are_plain_functions_run_in_the_threadpool(client):
    routes = [r for r in client.app.routes if getattr(r, "path", "") in ("/health", "/score")]
    routes += [r for r in client.app.routes if getattr(r, "path", "").startswith("/features")]
    assert len(routes) == 4
    assert not any(inspect.iscoroutinefunction(r.endpoint) for r in routes)


def test_service_connects_as_the_read_only_role(client):
    online = client.app.state.service.store()
    assert parse_dsn(online._conninfo)["user"] == store.LOCAL_READER_ROLE
    with online._cursor() as cur:
        cur.execute("SELECT current_user, current_setting('default_transaction_read_only')")
        assert cur.fetchone() == (store.LOCAL_READER_ROLE, "on")


# -- /features ---------------------------------------------------------------------------------


def test_features_of_a_known_account(client):
    response = client.get("/features/ACC000003")
    assert response.status_code == 200
    body = response.json()
    assert body[names.ACCOUNT_ID] == "ACC000003"
    assert body[names.FEATURE_DATE] == FEATURE_DAY.isoformat()
    assert body["txn_count_7d"] == 4
    assert body["amount_avg_30d"] == 40.0
    assert client.get("/features/ACC000000").json()["daily_average_amount"] is None


def test_features_of_an_unknown_account(client):
    response = client.get(f"/features/{UNKNOWN}")
    assert response.status_code == 404
    assert UNKNOWN in response.json()["detail"]


@pytest.mark.parametrize("account", ["acc000001", "ACC1", "ACC000001x", "ACC0000000001", "42"])
def test_malformed_account_id(client, account):
    response = client.get(f"/features/{account}")
    assert response.status_code == 404  # the route takes account ids only
    assert "not an account id" in response.json()["detail"]


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "9999-12-31T23:59:59+14:00",
        "2099-01-01T00:00:00Z",
    ],
)
def test_a_timestamp_far_off_is_refused_before_any_date_arithmetic(client, timestamp):
    response = client.post("/score", json=transaction(timestamp=timestamp))
    assert response.status_code == 422


def test_features_of_several_accounts_in_one_request(client):
    asked = ["ACC000003", UNKNOWN, "ACC000001", "ACC000003"]
    response = client.post("/features/batch", json={"account_ids": asked})
    assert response.status_code == 200
    body = response.json()
    assert [row[names.ACCOUNT_ID] for row in body["features"]] == ["ACC000003", "ACC000001"]
    assert body["unknown"] == [UNKNOWN]
    assert body["features"][0] == client.get("/features/ACC000003").json()


@pytest.mark.parametrize(
    "body",
    [
        {"account_ids": []},
        {"account_ids": ["ACC000001"] * (serving.MAX_BATCH + 1)},
        {"account_ids": ["ACC000001", "ACC1"]},
        {"account_ids": "ACC000001"},
        {"accounts": ["ACC000001"]},
        ["ACC000001"],
    ],
)
def test_features_batch_refuses_bad_requests(client, body):
    assert client.post("/features/batch", json=body).status_code == 422


HOSTILE = [
    "' OR '1'='1",
    "ACC000001'; DROP TABLE daily_account_features; --",
    'ACC000001" --',
    "ACC000001\x00",
    "ACC000001%",
    "../../etc/passwd",
    "ACC000001 OR 1=1",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_injection_like_ids_are_refused_harmlessly(client, materialized, hostile):
    response = client.get(f"/features/{quote(hostile, safe='')}")
    assert response.status_code in (404, 422)
    scored = client.post("/score", json=transaction(account_id=hostile))
    assert scored.status_code == 422
    batch = client.post("/features/batch", json={"account_ids": ["ACC000001", hostile]})
    assert batch.status_code == 422
    assert len(store.read_all()) == len(ACCOUNTS)
    assert client.get("/features/ACC000001").status_code == 200


# -- /score ------------------------------------------------------------------------------------


def test_score_of_a_known_account_uses_its_previous_day(client, model_file):
    event = transaction()
    response = client.post("/score", json=event)
    assert response.status_code == 200
    body = response.json()
    model = scoring.ScoringModel.load(str(model_file))
    expected = scoring.score_transaction(model, event, online_row("ACC000003"))
    assert body["history"] == scoring.PREVIOUS_DAY
    assert body["features_date"] == FEATURE_DAY.isoformat()
    assert body["note"] is None
    assert math.isclose(body["fraud_probability"], expected["fraud_probability"], abs_tol=1e-12)
    assert body["is_fraud"] == (body["fraud_probability"] >= body["threshold"])
    assert body["threshold"] == 0.5
    assert body["model_version"] == model.version
    assert body["transaction_id"] == "TX-1"
    assert body["inputs"] == pytest.approx(expected["inputs"])
    assert body["inputs"]["txn_count_7d"] == 4.0  # from the online row


def test_score_of_an_unknown_account_uses_neutral_defaults(client):
    event = transaction(account_id=UNKNOWN)
    body = client.post("/score", json=event).json()
    assert body["history"] == scoring.UNKNOWN_ACCOUNT
    assert body["features_date"] is None
    assert "neutral defaults" in body["note"]
    assert body["inputs"] == pytest.approx(scoring.transaction_inputs(event, None))


def test_score_with_stale_features_uses_neutral_defaults(client):
    event = transaction(timestamp="2025-02-04T12:00:00Z")
    body = client.post("/score", json=event).json()
    assert body["history"] == scoring.STALE
    assert body["inputs"] == pytest.approx(scoring.transaction_inputs(event, None))


def test_score_refuses_features_from_the_transactions_own_day(client):
    response = client.post("/score", json=transaction(timestamp="2025-01-30T23:00:00Z"))
    assert response.status_code == 409
    assert "batch" in response.json()["detail"]


def test_unseen_category_scores_like_a_missing_one(client):
    unseen = client.post("/score", json=transaction(category="teleportation")).json()
    missing = client.post("/score", json=transaction(category=None)).json()
    assert unseen["fraud_probability"] == missing["fraud_probability"]


FUTURE = (datetime.now(UTC) + timedelta(days=2)).isoformat()
BAD = {
    "negative amount": {"amount": -5.0},
    "zero amount": {"amount": 0},
    "amount as text": {"amount": "12.5"},
    "amount too large": {"amount": 2e6},
    "unknown currency": {"currency": "XYZ"},
    "no time zone": {"timestamp": "2025-01-31T02:15:00"},
    "not a time": {"timestamp": "yesterday"},
    "future": {"timestamp": FUTURE},
    "malformed account": {"account_id": "ACC12"},
    "account as number": {"account_id": 42},
    "empty id": {"transaction_id": ""},
    "unknown field": {"is_fraud": 1},
    "huge category": {"category": "x" * 1000},
}


@pytest.mark.parametrize("changes", BAD.values(), ids=BAD.keys())
def test_score_refuses_bad_input(client, changes):
    response = client.post("/score", json=transaction(**changes))
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("missing", ["transaction_id", "timestamp", "account_id", "amount"])
def test_score_refuses_a_missing_field(client, missing):
    event = transaction()
    del event[missing]
    assert client.post("/score", json=event).status_code == 422


@pytest.mark.parametrize("body", ["not json", '{"amount": NaN}', "[]", ""])
def test_score_refuses_a_body_that_is_not_a_transaction(client, body):
    response = client.post("/score", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_score_refuses_non_finite_amounts(client):
    body = json.dumps(transaction(amount=float("nan")))  # Python writes the NaN token
    response = client.post("/score", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422


# -- when something is missing ------------------------------------------------------------------


def test_postgres_down_gives_503_naming_it(model_file):
    down = "host=127.0.0.1 port=1 dbname=none user=none connect_timeout=1"
    with TestClient(serving.create_app(str(model_file), conninfo=down)) as test_client:
        health = test_client.get("/health")
        assert health.status_code == 503
        assert "PostgreSQL" in health.json()["detail"]
        assert "127.0.0.1:1" in health.json()["detail"]
        assert test_client.get("/features/ACC000001").status_code == 503
        assert test_client.post("/score", json=transaction()).status_code == 503


def test_no_model_gives_503_naming_what_is_missing(materialized, tmp_path):
    missing = tmp_path / "missing.json"
    with TestClient(serving.create_app(str(missing))) as test_client:
        response = test_client.post("/score", json=transaction())
        assert response.status_code == 503
        assert str(missing) in response.json()["detail"]
        assert test_client.get("/features/ACC000001").status_code == 200
        assert "unavailable" in test_client.get("/health").json()["model_version"]


# -- the service in its own process ------------------------------------------------------------


def test_service_process_and_latency_helpers(materialized, model_file):
    with launcher.start_service(model_location=str(model_file)) as running:
        assert running.process.poll() is None
        lookups = latency.http_lookups(running.url, [*ACCOUNTS, UNKNOWN], n=30)
        events = [transaction(account_id=a, transaction_id=f"TX-{a}") for a in ACCOUNTS]
        scores = latency.http_scores(running.url, events, n=30)
        batches = latency.http_batch_lookups(running.url, [*ACCOUNTS, UNKNOWN], 4, n=10)
        side_by_side = latency.http_scores_side_by_side([running.url] * 2, events, n=12)
    assert running.process.returncode == 0
    assert [t.shape for t in side_by_side] == [(12,), (12,)]
    assert all((t > 0).all() for t in side_by_side)
    assert lookups.shape == scores.shape == (30,) and batches.shape == (10,)
    assert (lookups > 0).all() and (scores > 0).all() and (batches > 0).all()

    model = scoring.ScoringModel.load(str(model_file))
    with store.FeatureStore() as online:
        in_process = latency.scores(online, model, events, n=30)
    assert np.isfinite(in_process).all()


def test_the_service_imports_no_spark_even_when_scoring(materialized, model_file):
    """A process that never starts a JVM must not pay for pyspark (or pandas) at import."""
    probe = f"""
import json, sys, warnings
warnings.simplefilter("ignore")
from fastapi.testclient import TestClient
from workbook import serving
with TestClient(serving.create_app({str(model_file)!r}, {store.dsn(store.READER)!r})) as client:
    answer = client.post("/score", json={transaction()!r})
heavy = ("pyspark", "py4j", "pandas")
print(json.dumps([answer.status_code, sorted(m for m in sys.modules if m.startswith(heavy))]))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    status, loaded = json.loads(result.stdout.splitlines()[-1])
    assert status == 200, "the probe must really score"
    assert loaded == []


# -- the ingestion edge: POST /transactions -----------------------------------------------------


def test_a_batch_is_taken_in_once_and_its_refused_events_never_land(client):
    landing = Path(lakehouse.location(names.LANDING_ZONE))
    before = set(landing.glob("*.jsonl")) if landing.exists() else set()
    good = transaction(transaction_id="TX-EDGE-1")
    batch = [good, transaction(transaction_id="TX-EDGE-2", currency="XYZ"), "not an event"]
    answers = [client.post("/transactions", json=batch) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    body = answers[0].json()
    assert (body["accepted"], body["refused"]) == (1, 2)
    assert [(e["transaction_id"], e["accepted"], e["reason"]) for e in body["events"]] == [
        ("TX-EDGE-1", True, None),
        ("TX-EDGE-2", False, "unknown_currency"),
        (None, False, "malformed_json"),
    ]
    new = set(landing.glob("*.jsonl")) - before
    assert len(new) == 1, "the same batch sent twice lands once"
    assert [json.loads(line) for line in new.pop().read_text().splitlines()] == [good]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"\xff", 400), (b"{", 400), (b'{"events": []}', 422), (b"[]", 422)],
)
def test_a_body_that_is_not_a_batch_gets_a_clear_4xx(client, body, status):
    response = client.post(
        "/transactions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["detail"]
