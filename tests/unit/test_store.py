"""The online store against a real (embedded) PostgreSQL."""

import datetime as dt

import pandas as pd
import pytest

from workbook import names, store
from workbook.features import FEATURE_COLUMNS

pytestmark = pytest.mark.postgres


def latest_rows(n: int = 5, amount: float = 10.0) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = {
            c: (i + 1) if "count" in c or "distinct" in c else amount * (i + 1)
            for c in FEATURE_COLUMNS
        }
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
    assert len(store.read_all(conn)) == 5


def test_materialize_updates_only_changed_rows(conn):
    store.materialize(conn, latest_rows())
    changed = latest_rows()
    changed.loc[2, "txn_count_7d"] = 99
    assert store.materialize(conn, changed) == {"inserted": 0, "updated": 1, "unchanged": 4}
    assert store.read_all(conn).set_index(names.ACCOUNT_ID).loc["ACC000002", "txn_count_7d"] == 99


def test_online_values_round_trip_exactly(conn):
    rows = latest_rows()
    rows.loc[1, "amount_avg_30d"] = 0.1 + 0.2  # a float with no short decimal form
    store.materialize(conn, rows)
    online = store.read_all(conn).set_index(names.ACCOUNT_ID)
    assert online.loc["ACC000001", "amount_avg_30d"] == 0.1 + 0.2
    assert pd.isna(online.loc["ACC000000", "daily_average_amount"])


def test_lookups(conn):
    store.materialize(conn, latest_rows())
    with store.FeatureStore() as online:
        found = online.get_features("ACC000003")
        assert found[names.ACCOUNT_ID] == "ACC000003"
        assert found[store.DATE_COLUMN] == dt.date(2025, 1, 30)
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
    assert len(store.read_all(conn)) == 5


def test_unreachable_store_names_itself():
    with pytest.raises(store.StoreUnavailableError, match="PostgreSQL .*not reachable"):
        store.connect("host=127.0.0.1 port=1 dbname=none user=none")
