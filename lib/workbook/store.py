"""The online feature store: each account's latest features in PostgreSQL.

Key: ``account_id`` alone, because the table holds *the latest* row per account (what a
scoring service needs); the history stays in the offline Delta table. ``feature_date``
says which day the row describes.
"""

from __future__ import annotations

import io
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import psycopg2
from psycopg2 import sql
from psycopg2.pool import ThreadedConnectionPool

from workbook import names
from workbook.config import get_settings
from workbook.features import FEATURE_COLUMNS, FEATURES_SCHEMA

TABLE = names.ONLINE_FEATURES_TABLE
STAGING = f"{TABLE}_staging"
DATE_COLUMN = "feature_date"
COLUMNS = (names.ACCOUNT_ID, DATE_COLUMN, *FEATURE_COLUMNS)
_SQL_TYPES = {"string": "TEXT", "date": "DATE", "bigint": "BIGINT", "double": "DOUBLE PRECISION"}


class StoreUnavailableError(RuntimeError):
    """PostgreSQL could not be reached."""


def _column_types() -> dict[str, str]:
    types = {f.name: _SQL_TYPES[f.dataType.simpleString()] for f in FEATURES_SCHEMA}
    types[DATE_COLUMN] = types.pop(names.TRANSACTION_DATE)
    return {c: types[c] for c in COLUMNS}


def _local_server():
    settings = get_settings()
    settings.postgres_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(settings.postgres_dir, cleanup_mode="stop")


def dsn() -> str:
    """Where the store is: the embedded server locally; on the stack, libpq's PG* variables."""
    return _local_server().get_uri() if get_settings().profile == "local" else ""


def connect(conninfo: str | None = None):
    conninfo = dsn() if conninfo is None else conninfo
    try:
        return psycopg2.connect(conninfo, connect_timeout=5)
    except psycopg2.OperationalError as error:
        raise StoreUnavailableError(_unavailable(error)) from None


def _unavailable(error: Exception) -> str:
    hint = (
        "start it with `docker compose up -d postgres` and check PGHOST and PGPORT in .env"
        if get_settings().profile == "stack"
        else "the embedded server starts by itself; run `make reset` if its data folder is damaged"
    )
    return f"PostgreSQL (online feature store) is not reachable: {str(error).strip()}; {hint}."


def create_tables(conn) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in _column_types().items()
    )
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {t} ({cols}, "
                "last_updated TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY ({key}))"
            ).format(t=sql.Identifier(TABLE), cols=columns, key=sql.Identifier(names.ACCOUNT_ID))
        )
        cur.execute(
            sql.SQL("CREATE UNLOGGED TABLE IF NOT EXISTS {s} ({cols})").format(
                s=sql.Identifier(STAGING), cols=columns
            )
        )


def materialize(conn, latest: pd.DataFrame) -> dict[str, int]:
    """Upsert the latest rows through a staging table in one transaction.

    Unchanged rows are not touched, so a rerun reports zero inserted and zero updated, and a
    reader sees either the old or the new row, never a half-written one.
    """
    frame = latest.rename(columns={names.TRANSACTION_DATE: DATE_COLUMN})[list(COLUMNS)]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in COLUMNS[1:]
    )
    target_row = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in COLUMNS[1:])
    new_row = sql.SQL(", ").join(
        sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in COLUMNS[1:]
    )
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGING)))
        cur.copy_expert(
            sql.SQL("COPY {s} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')")
            .format(s=sql.Identifier(STAGING), cols=cols)
            .as_string(cur),
            buffer,
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM {s} "
                "ON CONFLICT ({key}) DO UPDATE SET {updates}, last_updated = now() "
                "WHERE ({target_row}) IS DISTINCT FROM ({new_row}) "
                "RETURNING (xmax = 0) AS inserted"
            ).format(
                t=sql.Identifier(TABLE),
                s=sql.Identifier(STAGING),
                cols=cols,
                key=sql.Identifier(names.ACCOUNT_ID),
                updates=updates,
                target_row=target_row,
                new_row=new_row,
            )
        )
        flags = [row[0] for row in cur.fetchall()]
    inserted = sum(flags)
    return {
        "inserted": inserted,
        "updated": len(flags) - inserted,
        "unchanged": len(frame) - len(flags),
    }


def read_all(conn) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {cols} FROM {t} ORDER BY {key}").format(
                cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
                t=sql.Identifier(TABLE),
                key=sql.Identifier(names.ACCOUNT_ID),
            )
        )
        return pd.DataFrame(cur.fetchall(), columns=list(COLUMNS))


class FeatureStore:
    """Low-latency lookups of an account's latest features, through a connection pool."""

    _ONE = sql.SQL("SELECT {cols} FROM {t} WHERE {key} = %s").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        t=sql.Identifier(TABLE),
        key=sql.Identifier(names.ACCOUNT_ID),
    )
    _MANY = sql.SQL("SELECT {cols} FROM {t} WHERE {key} = ANY(%s)").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        t=sql.Identifier(TABLE),
        key=sql.Identifier(names.ACCOUNT_ID),
    )

    def __init__(
        self, conninfo: str | None = None, min_connections: int = 1, max_connections: int = 8
    ):
        conninfo = dsn() if conninfo is None else conninfo
        try:
            self._pool = ThreadedConnectionPool(
                min_connections, max_connections, conninfo, connect_timeout=5
            )
        except psycopg2.OperationalError as error:
            raise StoreUnavailableError(_unavailable(error)) from None

    @contextmanager
    def _cursor(self):
        conn = self._pool.getconn()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                yield cur
        finally:
            self._pool.putconn(conn)

    def get_features(self, account_id: str) -> dict | None:
        """The account's latest features, or None for an unknown account."""
        with self._cursor() as cur:
            cur.execute(self._ONE, (account_id,))
            row = cur.fetchone()
        return dict(zip(COLUMNS, row, strict=True)) if row else None

    def get_many(self, account_ids: list[str]) -> dict[str, dict]:
        with self._cursor() as cur:
            cur.execute(self._MANY, (list(account_ids),))
            rows = cur.fetchall()
        return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in rows}

    def close(self) -> None:
        self._pool.closeall()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lookup_latencies_ms(
    store: FeatureStore, account_ids: list[str], n: int = 2000, seed: int = 0
) -> np.ndarray:
    """Time ``n`` single-key lookups of randomly chosen accounts, in milliseconds."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.asarray(account_ids), n)
    out = np.empty(n)
    for i, key in enumerate(keys):
        start = time.perf_counter_ns()
        store.get_features(str(key))
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out
