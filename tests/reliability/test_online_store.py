"""The online store under faults: materialization during lookups, PostgreSQL restarted.

Each scenario runs on the embedded server (local profile) and, when the native stack is
up, on its PostgreSQL with the stack's two roles. Rows are written for accounts of the
tests' own (``REL...``), so the stack's online table keeps its other rows.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import date, timedelta

import pandas as pd
import pytest
import stack_services

from workbook import local_postgres, names, store
from workbook.config import get_settings

pytestmark = pytest.mark.postgres

ACCOUNTS = [f"REL{i:06d}" for i in range(300)]
BASE_DAY = date(2025, 1, 1)
INTEGER_COLUMNS = {c for c, t in store._column_types().items() if t == "BIGINT"}
FEATURE_COLUMNS = store.COLUMNS[2:]
VERSION_COLUMN = next(c for c in FEATURE_COLUMNS if c in INTEGER_COLUMNS)


def rows(version: int) -> pd.DataFrame:
    """Every account's row at ``version``: each value says which version and account it is."""
    return pd.DataFrame(
        [
            {
                names.ACCOUNT_ID: account,
                names.TRANSACTION_DATE: BASE_DAY + timedelta(days=version),
                **{
                    c: version if c in INTEGER_COLUMNS else version + i / 1000
                    for c in FEATURE_COLUMNS
                },
            }
            for i, account in enumerate(ACCOUNTS)
        ]
    )


def is_whole(row: dict) -> bool:
    """True when every column of ``row`` comes from one version of its account."""
    version = row[VERSION_COLUMN]
    i = ACCOUNTS.index(row[names.ACCOUNT_ID])
    expected = {
        c: version if c in INTEGER_COLUMNS else pytest.approx(version + i / 1000)
        for c in FEATURE_COLUMNS
    }
    return row[names.FEATURE_DATE] == BASE_DAY + timedelta(days=version) and all(
        row[c] == expected[c] for c in FEATURE_COLUMNS
    )


@pytest.fixture(params=["local", "stack"])
def profile(request, monkeypatch):
    """Run on the embedded server, then on the native stack's PostgreSQL (if it is up)."""
    if request.param == "stack":
        monkeypatch.setenv("WORKBOOK_PROFILE", "stack")
        stack_services.require_native("postgres")
    writer = store.connect()
    store.create_tables(writer)
    store.materialize(writer, rows(1))
    writer.close()
    yield request.param
    writer = store.connect()  # a new connection: the server may have restarted meanwhile
    with writer, writer.cursor() as cur:  # leave the stack's table as it was
        cur.execute(f"DELETE FROM {store.TABLE} WHERE {names.ACCOUNT_ID} LIKE %s", ("REL%",))
    writer.close()


class Clients:
    """Threads that each look up random accounts through their own store (own pool)."""

    def __init__(self, n: int, seconds_between: float = 0.0):
        self.stop = threading.Event()
        self.log: list[tuple[float, int, str, object]] = []  # (time, client, outcome, detail)
        self.lock = threading.Lock()
        self.pause = seconds_between
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(n)]
        for thread in self.threads:
            thread.start()

    def record(self, client: int, outcome: str, detail: object = None) -> None:
        with self.lock:
            self.log.append((time.monotonic(), client, outcome, detail))

    def run(self, client: int) -> None:
        rng = random.Random(client)
        online = None
        while not self.stop.is_set():
            try:
                if online is None:
                    online = store.FeatureStore(max_connections=2)
                account = rng.choice(ACCOUNTS)
                row = online.get_features(account)
                if row is None:
                    self.record(client, "missing", account)
                elif not is_whole(row):
                    self.record(client, "torn", row)
                else:
                    self.record(client, "ok", account)
            except store.StoreUnavailableError as error:
                self.record(client, "unavailable", str(error))
            except Exception as error:  # anything else is a defect: keep it for the assert
                self.record(client, "crash", repr(error))
            time.sleep(self.pause)
        if online is not None:
            online.close()

    def outcomes(self, since: float = 0.0) -> dict[str, int]:
        with self.lock:
            counts: dict[str, int] = {}
            for at, _, outcome, _ in self.log:
                if at >= since:
                    counts[outcome] = counts.get(outcome, 0) + 1
            return counts

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_materialization_while_clients_look_up(profile, tally):
    clients = Clients(6)
    try:
        writer = store.connect()
        for version in range(2, 12):
            store.materialize(writer, rows(version))
        writer.close()
    finally:
        clients.finish()
    counts = clients.outcomes()
    with tally.fault(f"materialize during lookups from 6 clients ({profile})") as outcome:
        looked_up = [d for _, _, o, d in clients.log if o in ("ok", "missing", "torn")]
        found = [d for _, _, o, d in clients.log if o == "ok"]
        outcome.compare(looked_up, found)  # a missing account or a torn row is a lost read
        assert counts.get("ok", 0) > 100, counts
        assert set(counts) == {"ok"}, [e for e in clients.log if e[2] != "ok"][:3]
        with store.FeatureStore() as online:
            final = online.get_many(ACCOUNTS)
        outcome.compare(ACCOUNTS, [a for a, row in final.items() if is_whole(row)])
        assert {row[VERSION_COLUMN] for row in final.values()} == {11}


def stop_postgres(profile: str) -> None:
    if profile == "stack":
        stack_services.stop("postgres")
        return
    local_postgres.stop(get_settings().postgres_dir, mode="immediate")


def start_postgres(profile: str) -> None:
    if profile == "stack":
        stack_services.start()
        return
    local_postgres.ensure_running(get_settings().postgres_dir)


def wait_for(clients: Clients, outcome: str, since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while clients.outcomes(since).get(outcome, 0) < len(clients.threads):
        assert time.monotonic() < deadline, f"no {outcome!r} in {timeout}s: {clients.outcomes()}"
        time.sleep(0.2)
    return time.monotonic()


def test_postgres_restarted_under_lookups(profile, tally):
    clients = Clients(4, seconds_between=0.01)
    with tally.fault(f"PostgreSQL stopped and restarted under lookups ({profile})") as outcome:
        try:
            wait_for(clients, "ok", 0, 30)
            stopped_at = time.monotonic()
            stop_postgres(profile)
            # While it is down every client gets a clear error, quickly (no hanging call).
            first_error = wait_for(clients, "unavailable", stopped_at, 30)
            time.sleep(2)
            start_postgres(profile)
            started_at = time.monotonic()
            # The same clients recover without being restarted.
            recovered = wait_for(clients, "ok", started_at, 60)
        finally:
            clients.finish()
        errors = {d for _, _, o, d in clients.log if o == "unavailable"}
        assert all("PostgreSQL (online feature store) is not reachable" in e for e in errors)
        assert first_error - stopped_at < 15 and recovered - started_at < 30
        crashes = [d for _, _, o, d in clients.log if o == "crash"]
        assert crashes == []
        looked_up = [d for _, _, o, d in clients.log if o in ("ok", "missing", "torn")]
        outcome.compare(looked_up, [d for _, _, o, d in clients.log if o == "ok"])
        with store.FeatureStore() as online:
            final = online.get_many(ACCOUNTS)
        outcome.compare(ACCOUNTS, [a for a, row in final.items() if is_whole(row)])
