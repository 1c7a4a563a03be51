"""The online feature store: each account's latest features in PostgreSQL.

Key: ``account_id`` alone, because the table holds *the latest* row per account (what a
scoring service needs); the history stays in the offline Delta table. ``feature_date``
says which day the row describes.

Two roles: the writer materializes; the reader, which lookups and the scoring service use,
can only SELECT.
"""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from psycopg2.pool import ThreadedConnectionPool

from workbook import lineage, local_postgres, names
from workbook.config import get_settings, required

if TYPE_CHECKING:  # pandas is for the writer and tools; lookups (the service) need none
    import pandas as pd

WRITER, READER = "writer", "reader"
# The stack's roles come from these variables (user, password); see .env.example.
ROLE_VARIABLES = {
    WRITER: ("FEATURES_WRITER_USER", "FEATURES_WRITER_PASSWORD"),
    READER: ("FEATURES_READER_USER", "FEATURES_READER_PASSWORD"),
}
LOCAL_READER_ROLE = "feature_reader"
SETUP_LOCK = 7_040_501  # any constant: the advisory lock that serializes create_tables

TABLE = names.ONLINE_FEATURES_TABLE
STAGING = f"{TABLE}_staging"
COLUMNS = (names.ACCOUNT_ID, names.FEATURE_DATE, *names.FEATURE_COLUMNS)


class StoreUnavailableError(RuntimeError):
    """PostgreSQL could not be reached."""


def _column_types() -> dict[str, str]:
    """The online table's SQL types, as the offline table's (``features.FEATURES_SCHEMA``)."""
    keys = {names.ACCOUNT_ID: "TEXT", names.FEATURE_DATE: "DATE"}
    return keys | {
        c: "BIGINT" if c in names.COUNT_FEATURES else "DOUBLE PRECISION"
        for c in names.FEATURE_COLUMNS
    }


def _local_server() -> local_postgres.Server:
    return local_postgres.ensure_running(get_settings().postgres_dir)


def dsn(role: str = WRITER) -> str:
    """How to connect as ``role``: "writer" materializes, "reader" only reads.

    Locally the writer is the embedded server's superuser and the reader a role created
    for it; on the stack both come from the environment (see .env.example).
    """
    if role not in ROLE_VARIABLES:
        raise ValueError(f"role={role!r}; expected one of {', '.join(ROLE_VARIABLES)}")
    if get_settings().profile == "local":
        server = _local_server()
        if role == WRITER:
            return server.uri()
        _prepare_local_reader(server)
        return server.uri(user=LOCAL_READER_ROLE)
    user, password = ROLE_VARIABLES[role]
    return make_dsn(
        host=required("PGHOST"),
        port=required("PGPORT"),
        dbname=required("PGDATABASE"),
        user=required(user),
        password=required(password),
    )


_prepared: set[str] = set()


def _prepare_local_reader(server) -> None:
    """Create the reader role and the tables it reads, once per process and server."""
    key = str(server.pgdata)
    if key not in _prepared:
        conn = connect(WRITER)
        try:
            create_tables(conn)
        finally:
            conn.close()
        _prepared.add(key)


def connect(role: str = WRITER, conninfo: str | None = None):
    """A new connection as ``role`` ("writer" or "reader"), or to ``conninfo`` if given."""
    conninfo = dsn(role) if conninfo is None else conninfo
    try:
        return psycopg2.connect(conninfo, connect_timeout=5)
    except psycopg2.OperationalError as error:
        raise StoreUnavailableError(_unavailable(error, conninfo)) from None


def _address(conninfo: str) -> str:
    params = parse_dsn(conninfo)
    host = params.get("host") or os.environ.get("PGHOST") or "the default socket"
    where = f"socket {host}" if host.startswith("/") else f"{host}:{params.get('port') or 5432}"
    return f"{where} as {params.get('user') or 'the default user'}"


def _unavailable(error: Exception, conninfo: str) -> str:
    hint = (
        "start it with `make stack-up` (native) or `docker compose up -d postgres`, and check "
        "PGHOST and PGPORT in .env"
        if get_settings().profile == "stack"
        else "the embedded server starts by itself; run `make reset` if its data folder is damaged"
    )
    return (
        f"PostgreSQL (online feature store) is not reachable at {_address(conninfo)}: "
        f"{str(error).strip()}; {hint}."
    )


def create_tables(conn) -> None:
    """Create the online table (idempotently), as the writer.

    Locally ``conn`` is the superuser's, and this also creates the read-only role and lets
    it SELECT from the table; on the stack the roles and their grants are the database's
    own setup (stack/postgres/init.sh).
    """
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in _column_types().items()
    )
    local = get_settings().profile == "local"
    with conn, conn.cursor() as cur:
        # Serializes concurrent setups (a notebook and the service starting together).
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {t} ({cols}, "
                "{updated} TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY ({key}))"
            ).format(
                t=sql.Identifier(TABLE),
                cols=columns,
                updated=sql.Identifier(names.LAST_UPDATED),
                key=sql.Identifier(names.ACCOUNT_ID),
            )
        )
        cur.execute(
            sql.SQL("CREATE UNLOGGED TABLE IF NOT EXISTS {s} ({cols})").format(
                s=sql.Identifier(STAGING), cols=columns
            )
        )
        # A table made before a feature was added gets its column (null until refreshed).
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name IN (%s, %s)",
            (TABLE, STAGING),
        )
        present = set(cur.fetchall())
        for table in (TABLE, STAGING):
            for column, kind in _column_types().items():
                if (table, column) not in present:
                    cur.execute(
                        sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                            sql.Identifier(table), sql.Identifier(column), sql.SQL(kind)
                        )
                    )
        if local:
            _create_local_reader(cur)


def drop_tables(conn) -> None:
    """Remove the online and staging tables (to start over); the roles stay."""
    with conn, conn.cursor() as cur:
        for table in (TABLE, STAGING):
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def _create_local_reader(cur) -> None:
    """A login role with no password (the embedded server trusts its socket) that can only read.

    Privileges are the boundary: it gets CONNECT, USAGE on the schema and SELECT on the online
    table, nothing else. Read-only transactions by default add a second guard.
    """
    role = sql.Identifier(LOCAL_READER_ROLE)
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (LOCAL_READER_ROLE,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
    cur.execute("SELECT current_database()")
    database = sql.Identifier(cur.fetchone()[0])
    cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
    cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
    cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(TABLE), role))


def materialize(conn, latest) -> dict[str, int]:
    """Upsert each account's latest row through the staging table, in one transaction.

    ``latest`` is a Spark DataFrame (or a pandas frame) of ``features.latest_per_account``.
    On the stack Spark writes the staging table over JDBC; locally the rows are copied in
    with COPY. Unchanged rows are not touched, so a rerun reports zero inserted and zero
    updated, and a reader sees either the old or the new row, never a half-written one.
    """
    import pandas as pd

    frame = None
    if isinstance(latest, pd.DataFrame):
        frame = latest
    elif get_settings().profile == "local":
        frame = latest.toPandas()
    else:
        staged = _stage_over_jdbc(latest)
    cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in COLUMNS[1:]
    )
    target_row = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in COLUMNS[1:])
    new_row = sql.SQL(", ").join(
        sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in COLUMNS[1:]
    )
    with conn, conn.cursor() as cur:
        if frame is not None:
            staged = _stage_with_copy(cur, frame)
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM {s} "
                "ON CONFLICT ({key}) DO UPDATE SET {updates}, {updated} = now() "
                "WHERE ({target_row}) IS DISTINCT FROM ({new_row}) "
                "RETURNING (xmax = 0) AS inserted"
            ).format(
                t=sql.Identifier(TABLE),
                s=sql.Identifier(STAGING),
                cols=cols,
                key=sql.Identifier(names.ACCOUNT_ID),
                updates=updates,
                updated=sql.Identifier(names.LAST_UPDATED),
                target_row=target_row,
                new_row=new_row,
            )
        )
        flags = [row[0] for row in cur.fetchall()]
    online = lineage.postgres_table(conn, TABLE)
    lineage.record("materialize_online", [lineage.table(names.FEATURES_TABLE)], [online])
    inserted = sum(flags)
    return {
        "inserted": inserted,
        "updated": len(flags) - inserted,
        "unchanged": staged - len(flags),
    }


def _stage_with_copy(cur, latest: pd.DataFrame) -> int:
    frame = latest.rename(columns={names.TRANSACTION_DATE: names.FEATURE_DATE})[list(COLUMNS)]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGING)))
    cur.copy_expert(
        sql.SQL("COPY {s} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')")
        .format(s=sql.Identifier(STAGING), cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
        .as_string(cur),
        buffer,
    )
    return len(frame)


def _stage_over_jdbc(latest) -> int:
    """Replace the staging table's rows with ``latest``, written by Spark's JDBC connector.

    ``truncate`` keeps the table (and its UNLOGGED setting) instead of dropping it.
    """
    rows = latest.withColumnRenamed(names.TRANSACTION_DATE, names.FEATURE_DATE).select(*COLUMNS)
    user, password = (required(v) for v in ROLE_VARIABLES[WRITER])
    url = f"jdbc:postgresql://{required('PGHOST')}:{required('PGPORT')}/{required('PGDATABASE')}"
    (
        rows.write.format("jdbc")
        .mode("overwrite")
        .options(url=url, dbtable=STAGING, user=user, password=password, truncate="true")
        .option("driver", "org.postgresql.Driver")
        .save()
    )
    return rows.count()


def engine(role: str = READER, conninfo: str | None = None):
    """A SQLAlchemy engine on the store, for pandas' ``read_sql`` (connections as ``connect``)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(
        "postgresql+psycopg2://", creator=lambda: connect(role, conninfo), poolclass=NullPool
    )


def read_all(role: str = READER, conninfo: str | None = None) -> pd.DataFrame:
    """The whole online table, ordered by account, read by pandas through SQLAlchemy."""
    import pandas as pd
    from sqlalchemy import column, select, table

    online = table(TABLE, *map(column, COLUMNS))
    query = select(online).order_by(online.c[names.ACCOUNT_ID])
    source = engine(role, conninfo)
    try:
        return pd.read_sql(query, source)
    finally:
        source.dispose()


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
        self,
        role: str = READER,
        conninfo: str | None = None,
        min_connections: int = 1,
        max_connections: int = 8,
    ):
        conninfo = dsn(role) if conninfo is None else conninfo
        try:
            self._pool = ThreadedConnectionPool(
                min_connections, max_connections, conninfo, connect_timeout=5
            )
        except psycopg2.OperationalError as error:
            raise StoreUnavailableError(_unavailable(error, conninfo)) from None
        self._conninfo = conninfo
        # The pool raises instead of waiting when every connection is out; callers wait here.
        self._slots = threading.BoundedSemaphore(max_connections)

    @contextmanager
    def _cursor(self):
        with self._slots:
            try:
                conn = self._pool.getconn()
            except psycopg2.OperationalError as error:
                raise StoreUnavailableError(_unavailable(error, self._conninfo)) from None
            broken = False
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    yield cur
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                # The server went away (restart, network): drop this connection, report it.
                broken = True
                raise StoreUnavailableError(_unavailable(error, self._conninfo)) from None
            except psycopg2.DatabaseError as error:
                # A server that stops mid-query can surface as a plain DatabaseError with no
                # SQLSTATE (the connection may not be marked closed yet); an error in the
                # query itself always has one, or is of a more specific class.
                lost = type(error) is psycopg2.DatabaseError and error.pgcode is None
                if not (conn.closed or lost):
                    raise
                broken = True
                raise StoreUnavailableError(_unavailable(error, self._conninfo)) from None
            finally:
                self._pool.putconn(conn, close=broken or bool(conn.closed))

    def ping(self) -> None:
        """Raise StoreUnavailableError unless PostgreSQL answers a trivial query."""
        with self._cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    def get_features(self, account_id: str) -> dict | None:
        """The account's latest features, or None for an unknown account."""
        with self._cursor() as cur:
            cur.execute(self._ONE, (account_id,))
            row = cur.fetchone()
        return dict(zip(COLUMNS, row, strict=True)) if row else None

    def get_many(self, account_ids: list[str]) -> dict[str, dict]:
        """The latest features of the known accounts among ``account_ids``, by account."""
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
