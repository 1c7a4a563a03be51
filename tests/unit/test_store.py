"""The online store against a real (embedded) PostgreSQL."""

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import psycopg2.errors
import pytest
import read_only
from psycopg2.extensions import parse_dsn

from workbook import config, names, store
from workbook.names import COUNT_FEATURES, FEATURE_COLUMNS

pytestmark = pytest.mark.postgres


def latest_rows(n: int = 5, amount: float = 10.0) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = {c: (i + 1) if c in COUNT_FEATURES else amount * (i + 1) for c in FEATURE_COLUMNS}
        row["daily_average_amount"] = None if i == 0 else row["daily_average_amount"]
        rows.append(
            {names.ACCOUNT_ID: f"ACC{i:06d}", names.TRANSACTION_DATE: dt.date(2025, 1, 30), **row}
        )
    return pd.DataFrame(rows)


@pytest.fixture()
def conn():
    connection = store.connect()
    store.create_tables(connection)
    with connection, connection.cursor() as cur:
        cur.execute(f"TRUNCATE {store.TABLE}")
    yield connection
    connection.close()


def test_materialize_is_idempotent(conn):
    rows = latest_rows()
    assert store.materialize(conn, rows) == {"inserted": 5, "updated": 0, "unchanged": 0}
    assert store.materialize(conn, rows) == {"inserted": 0, "updated": 0, "unchanged": 5}
    assert len(store.read_all()) == 5


def test_a_table_made_before_a_feature_was_added_gets_its_column(conn):
    store.materialize(conn, latest_rows())
    newest = names.FEATURE_COLUMNS[-1]
    with conn, conn.cursor() as cur:
        for table in (store.TABLE, store.STAGING):
            cur.execute(f"ALTER TABLE {table} DROP COLUMN {newest}")
    store.create_tables(conn)
    assert store.read_all()[newest].isna().all()  # null until the next refresh fills it
    assert store.materialize(conn, latest_rows()) == {"inserted": 0, "updated": 5, "unchanged": 0}
    assert store.read_all()[newest].notna().all()


def test_materialize_updates_only_changed_rows(conn):
    store.materialize(conn, latest_rows())
    changed = latest_rows()
    changed.loc[2, "txn_count_7d"] = 99
    assert store.materialize(conn, changed) == {"inserted": 0, "updated": 1, "unchanged": 4}
    assert store.read_all().set_index(names.ACCOUNT_ID).loc["ACC000002", "txn_count_7d"] == 99


def test_online_values_round_trip_exactly(conn):
    rows = latest_rows()
    rows.loc[1, "amount_avg_30d"] = 0.1 + 0.2  # a float with no short decimal form
    store.materialize(conn, rows)
    online = store.read_all().set_index(names.ACCOUNT_ID)
    assert online.loc["ACC000001", "amount_avg_30d"] == 0.1 + 0.2
    assert pd.isna(online.loc["ACC000000", "daily_average_amount"])


def test_lookups(conn):
    store.materialize(conn, latest_rows())
    with store.FeatureStore() as online:
        found = online.get_features("ACC000003")
        assert found[names.ACCOUNT_ID] == "ACC000003"
        assert found[names.FEATURE_DATE] == dt.date(2025, 1, 30)
        assert found["txn_count_7d"] == 4
        assert online.get_features("ACC999999") is None
        assert set(online.get_many(["ACC000001", "ACC000004", "nope"])) == {
            "ACC000001",
            "ACC000004",
        }


@pytest.mark.parametrize(
    "hostile",
    ["' OR '1'='1", "ACC000001'; DROP TABLE daily_account_features; --", "\\x00", 'ACC000001" --'],
)
def test_lookup_is_parameterized(conn, hostile):
    store.materialize(conn, latest_rows())
    with store.FeatureStore() as online:
        assert online.get_features(hostile) is None
    assert len(store.read_all()) == 5


def test_unreachable_store_names_itself_and_the_address():
    with pytest.raises(
        store.StoreUnavailableError, match="PostgreSQL .*not reachable at 127.0.0.1:1"
    ):
        store.connect(conninfo="host=127.0.0.1 port=1 dbname=none user=none")


def test_unreachable_stack_store_says_how_to_start_it(stack_env):
    with pytest.raises(store.StoreUnavailableError) as raised:
        store.FeatureStore(conninfo="host=127.0.0.1 port=1 dbname=none user=none")
    assert "make stack-up" in str(raised.value)
    assert "docker compose up -d postgres" in str(raised.value)


# -- roles -------------------------------------------------------------------------------------

STACK_ENV = {
    "PGHOST": "db.example",
    "PGPORT": "5433",
    "PGDATABASE": "features",
    "FEATURES_WRITER_USER": "writer_user",
    "FEATURES_WRITER_PASSWORD": "writer secret",
    "FEATURES_READER_USER": "reader_user",
    "FEATURES_READER_PASSWORD": "reader-secret",
}


@pytest.fixture()
def stack_env(monkeypatch):
    """The stack profile with its variables set here only (no .env file is read)."""
    monkeypatch.setattr(config, "load_dotenv", lambda *args, **kwargs: None)
    monkeypatch.setenv("WORKBOOK_PROFILE", "stack")
    monkeypatch.setenv("SPARK_MASTER_URL", "spark://127.0.0.1:7077")
    for key, value in STACK_ENV.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_stack_roles_come_from_the_environment(stack_env):
    reader = parse_dsn(store.dsn("reader"))
    writer = parse_dsn(store.dsn("writer"))
    assert (reader["host"], reader["port"], reader["dbname"]) == ("db.example", "5433", "features")
    assert (reader["user"], reader["password"]) == ("reader_user", "reader-secret")
    assert (writer["user"], writer["password"]) == ("writer_user", "writer secret")
    with pytest.raises(ValueError, match="role="):
        store.dsn("admin")


@pytest.mark.parametrize("missing", sorted(STACK_ENV))
def test_a_missing_stack_variable_is_named(stack_env, missing):
    stack_env.delenv(missing)
    role = "writer" if "WRITER" in missing else "reader"
    with pytest.raises(config.MissingSettingError, match=f"{missing} is not set.*\\.env\\.example"):
        store.dsn(role)


@pytest.fixture()
def reader(conn):
    store.materialize(conn, latest_rows())
    connection = store.connect("reader")
    connection.autocommit = True
    yield connection
    connection.close()


def test_reader_can_read(reader):
    with reader.cursor() as cur:
        cur.execute("SELECT current_user, count(*) FROM daily_account_features")
        assert cur.fetchone() == (store.LOCAL_READER_ROLE, 5)


@pytest.mark.parametrize("statement", read_only.WRITES, ids=lambda s: " ".join(s.split()[:2]))
def test_reader_cannot_write(conn, reader, statement):
    for read_write in (False, True):
        with reader.cursor() as cur:
            if read_write:  # the read-only default is a session setting it may switch off...
                cur.execute("SET default_transaction_read_only = off")
            with pytest.raises(
                (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ReadOnlySqlTransaction)
            ) as refused:
                cur.execute(statement)
        if read_write:  # ...but privileges still refuse
            assert isinstance(refused.value, psycopg2.errors.InsufficientPrivilege)
    assert len(store.read_all()) == 5


def test_reader_role_setup_is_idempotent(conn):
    store.create_tables(conn)
    store.create_tables(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (store.LOCAL_READER_ROLE,))
        assert cur.fetchone() == (1,)
    conn.rollback()


def test_lookups_wait_for_a_free_connection(conn):
    store.materialize(conn, latest_rows())
    with store.FeatureStore(max_connections=2) as online, ThreadPoolExecutor(16) as pool:
        found = list(pool.map(online.get_features, ["ACC000001"] * 200))
    assert all(row[names.ACCOUNT_ID] == "ACC000001" for row in found)
