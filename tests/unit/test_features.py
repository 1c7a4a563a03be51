"""Daily account features against an independent pandas computation; upsert idempotence."""

from __future__ import annotations

import math
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from workbook import features, ingest, lakehouse, names, simulator
from workbook.simulator import SimulationConfig

pytestmark = pytest.mark.spark

TOLERANCE = 1e-6
# 45 days, so the 30-day window is cut; few accounts, so there is a row per account and day.
CONFIG = SimulationConfig(n_transactions=2500, days=45, n_accounts=40, seed=7)
# Hand-made accounts for the edges: (account, timestamp, amount, merchant).
EDGE_ROWS = [
    # A gap longer than 30 days: the 30-day window is empty, the 7-day max falls back to 0.
    ("ACC_GAP", "2025-01-01T12:00:00Z", 40.0, "M1"),
    ("ACC_GAP", "2025-01-01T03:00:00Z", 60.0, "M1"),
    ("ACC_GAP", "2025-02-10T12:00:00Z", 10.0, "M2"),
    # Night ends at 06:00: 05:59:59 is night, 06:00:00 is not; midnight is.
    ("ACC_NIGHT", "2025-01-20T05:59:59Z", 5.0, "M1"),
    ("ACC_NIGHT", "2025-01-20T06:00:00Z", 7.0, "M2"),
    ("ACC_NIGHT", "2025-01-21T00:00:00Z", 9.0, "M3"),
    # Rounding ties: Spark's round is HALF_UP (2.125 -> 2.13, 1.03125 -> 1.0313).
    ("ACC_TIE", "2025-01-30T10:00:00Z", 2.125, "M1"),
    ("ACC_TIE", "2025-01-31T10:00:00Z", 1.03125, "M1"),
    # A merchant is new again after 30 days without it: paid again 30 days later it is known
    # (M1, M3), 31 days later new (M2); two payments to one new merchant count once.
    ("ACC_MERCHANTS", "2025-01-01T10:00:00Z", 20.0, "M1"),
    ("ACC_MERCHANTS", "2025-01-05T10:00:00Z", 20.0, "M2"),
    ("ACC_MERCHANTS", "2025-01-06T10:00:00Z", 20.0, "M3"),
    ("ACC_MERCHANTS", "2025-01-31T10:00:00Z", 20.0, "M1"),
    ("ACC_MERCHANTS", "2025-02-05T10:00:00Z", 20.0, "M2"),
    ("ACC_MERCHANTS", "2025-02-05T11:00:00Z", 20.0, "M2"),
    ("ACC_MERCHANTS", "2025-02-05T12:00:00Z", 20.0, "M3"),
    # First seen on the last day of the data: a single row.
    ("ACC_LATE", "2025-02-14T23:59:59Z", 3.5, "M9"),
]


def half_up(value: float, digits: int) -> float:
    """Spark's ``round`` on a double: HALF_UP on the double's shortest decimal form."""
    if value is None or math.isnan(value):
        return math.nan
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))


def simulated_transactions(grid: bool) -> pd.DataFrame:
    """Simulated transactions plus the edge accounts, as (string) event columns.

    With ``grid`` the amounts are snapped to multiples of 1/4: then every sum is exact in
    floating point and both sides agree to the last bit, whatever order they add in.
    """
    tx, _ = simulator.simulate(CONFIG)
    if grid:
        tx[names.AMOUNT] = np.maximum(np.round(tx[names.AMOUNT] * 4) / 4, 0.25)
    edges = pd.DataFrame(
        [
            {
                names.TRANSACTION_ID: f"EDGE-{i}",
                names.TIMESTAMP: ts,
                names.ACCOUNT_ID: account,
                names.AMOUNT: amount,
                names.CURRENCY: "EUR",
                names.TRANSACTION_TYPE: "purchase",
                names.MERCHANT_ID: merchant,
                names.CATEGORY: "retail",
                names.IS_FLAGGED: False,
            }
            for i, (account, ts, amount, merchant) in enumerate(EDGE_ROWS)
        ]
    )
    return pd.concat([tx, edges], ignore_index=True)


def to_raw(spark, tx: pd.DataFrame):
    """The transactions as the raw table holds them (ingest.RAW_SCHEMA, real timestamps)."""
    frame = spark.createDataFrame(tx.assign(**{names.BATCH_ID: 0}))
    raw = frame.select(
        *[
            (
                F.to_timestamp(F.col(f.name), "yyyy-MM-dd'T'HH:mm:ssX").alias(f.name)
                if f.name == names.TIMESTAMP
                else F.col(f.name).cast(f.dataType).alias(f.name)
            )
            for f in ingest.RAW_SCHEMA
        ]
    )
    assert [(f.name, f.dataType) for f in raw.schema] == [
        (f.name, f.dataType) for f in ingest.RAW_SCHEMA
    ]
    return raw


def expected_features(tx: pd.DataFrame) -> pd.DataFrame:
    """The daily account features, computed independently with pandas and plain Python.

    Windows are taken by calendar day (the day and the 6 or 29 days before it) and summed
    oldest first, in plain floating point, as a SQL window over a dense calendar does.
    """
    stamps = pd.to_datetime(tx[names.TIMESTAMP], utc=True)
    frame = pd.DataFrame(
        {
            "account": tx[names.ACCOUNT_ID],
            "day": stamps.dt.date,
            "amount": tx[names.AMOUNT].astype(float),
            "merchant": tx[names.MERCHANT_ID],
            "night": stamps.dt.hour < 6,
        }
    )
    last_day = frame["day"].max()
    new_merchants = {}  # (account, day) -> merchants paid that day and on none of the 30 before
    for account, rows in frame.sort_values("day").groupby("account"):
        last_paid = {}
        for day, merchants in rows.groupby("day")["merchant"]:
            new_merchants[account, day] = sum(
                m not in last_paid or (day - last_paid[m]).days > 30 for m in set(merchants)
            )
            last_paid.update(dict.fromkeys(merchants, day))
    out = []
    for (account, day), rows in frame.groupby(["account", "day"]):
        out.append(
            {
                names.ACCOUNT_ID: account,
                "day": day,
                "daily_transaction_count": len(rows),
                "sum": rows["amount"].sum(),
                "daily_average_amount": half_up(rows["amount"].mean(), 4),
                "daily_max_amount": rows["amount"].max(),
                "daily_distinct_merchants": rows["merchant"].nunique(),
                "daily_new_merchants": new_merchants[account, day],
                "daily_night_count": int(rows["night"].sum()),
            }
        )
    active = {(r[names.ACCOUNT_ID], r["day"]): r for r in out}
    idle = {
        "daily_transaction_count": 0,
        "sum": 0.0,
        "daily_average_amount": math.nan,
        "daily_max_amount": math.nan,
        "daily_distinct_merchants": 0,
        "daily_new_merchants": 0,
        "daily_night_count": 0,
    }
    rows = []
    for account, first_day in frame.groupby("account")["day"].min().items():
        calendar = {}
        day = first_day
        while day <= last_day:
            today = dict(active.get((account, day), idle))
            today["daily_total_amount"] = half_up(today.pop("sum"), 2)
            calendar[day] = today
            day += timedelta(days=1)
        for day, today in calendar.items():
            week = [calendar[d] for d in _days_up_to(day, 7) if d in calendar]
            month = [calendar[d] for d in _days_up_to(day, 30) if d in calendar]
            count_7d = sum(d["daily_transaction_count"] for d in week)
            count_30d = sum(d["daily_transaction_count"] for d in month)
            nights_7d = sum(d["daily_night_count"] for d in week)
            maxima = [d["daily_max_amount"] for d in week if not math.isnan(d["daily_max_amount"])]
            total_30d = 0.0
            for d in month:
                total_30d += d["daily_total_amount"]
            total_7d = 0.0
            for d in week:
                total_7d += d["daily_total_amount"]
            rows.append(
                {
                    names.ACCOUNT_ID: account,
                    names.TRANSACTION_DATE: day.isoformat(),
                    **{c: today[c] for c in names.DAILY_FEATURES},
                    "txn_count_7d": count_7d,
                    "amount_sum_7d": half_up(total_7d, 2),
                    "amount_max_7d": max(maxima, default=0.0),
                    "night_share_7d": half_up(nights_7d / count_7d, 4) if count_7d else 0.0,
                    "txn_count_30d": count_30d,
                    "amount_avg_30d": half_up(total_30d / count_30d, 4) if count_30d else math.nan,
                }
            )
    return pd.DataFrame(rows)


def _days_up_to(day: date, n: int) -> list[date]:
    """The n calendar days ending with ``day``, oldest first."""
    return [day - timedelta(days=k) for k in range(n - 1, -1, -1)]


def assert_features_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    keys = list(names.FEATURE_KEYS)
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert len(got) == len(want)
    assert got[keys].values.tolist() == want[keys].values.tolist()
    for column in names.FEATURE_COLUMNS:
        g = got[column].astype(float).to_numpy()
        w = want[column].astype(float).to_numpy()
        assert (np.isnan(g) == np.isnan(w)).all(), f"{column}: nulls differ"
        both = ~np.isnan(w)
        diff = np.abs(g[both] - w[both])
        worst = int(np.argmax(diff)) if diff.size else 0
        assert diff.size == 0 or diff.max() <= TOLERANCE, (
            f"{column}: got {g[both][worst]}, want {w[both][worst]} "
            f"at {got.loc[both, keys].iloc[worst].tolist()}"
        )


@pytest.fixture(scope="module")
def grid_tx():
    return simulated_transactions(grid=True)


@pytest.fixture(scope="module")
def daily(spark, grid_tx):
    return features.daily_account_features(to_raw(spark, grid_tx)).toPandas()


def test_schema_is_the_features_schema(spark, grid_tx):
    result = features.daily_account_features(to_raw(spark, grid_tx))
    assert [(f.name, f.dataType) for f in result.schema] == [
        (f.name, f.dataType) for f in features.FEATURES_SCHEMA
    ]


def test_every_feature_matches_pandas(daily, grid_tx):
    got = daily.assign(**{names.TRANSACTION_DATE: daily[names.TRANSACTION_DATE].astype(str)})
    assert_features_equal(got, expected_features(grid_tx))


def test_reference_covers_the_edges(daily, grid_tx):
    """Guard that the data exercises what the comparison is meant to check."""
    want = expected_features(grid_tx).set_index([names.ACCOUNT_ID, names.TRANSACTION_DATE])
    # Dense calendar: every account runs to the global last day, idle days included.
    last = want.index.get_level_values(1).max()
    assert last == "2025-02-14"
    assert (want.groupby(level=0).apply(lambda f: f.index[-1][1]) == last).all()
    assert (want["daily_transaction_count"] == 0).any()
    assert want["amount_avg_30d"].isna().any()  # the GAP account's empty 30-day windows
    assert (want["txn_count_30d"] > want["txn_count_7d"]).any()
    assert want.loc[("ACC_GAP", "2025-02-05"), "amount_max_7d"] == 0.0
    assert want.loc[("ACC_GAP", "2025-01-01"), "daily_night_count"] == 1
    assert want.loc[("ACC_NIGHT", "2025-01-20"), "daily_night_count"] == 1
    assert want.loc[("ACC_NIGHT", "2025-01-21"), "night_share_7d"] == half_up(2 / 3, 4)
    assert want.loc[("ACC_TIE", "2025-01-30"), "daily_total_amount"] == 2.13
    assert want.loc[("ACC_TIE", "2025-01-31"), "daily_average_amount"] == 1.0313
    assert len(want.loc["ACC_LATE"]) == 1
    new = want.loc["ACC_MERCHANTS", "daily_new_merchants"]
    assert (new["2025-01-01"], new["2025-01-31"], new["2025-02-05"]) == (1, 0, 1)


def test_edge_accounts(daily):
    rows = daily.set_index([names.ACCOUNT_ID, daily[names.TRANSACTION_DATE].astype(str)])
    gap = rows.loc["ACC_GAP"]
    assert len(gap) == 45
    assert gap.loc["2025-01-01", "daily_transaction_count"] == 2
    assert gap.loc["2025-01-01", "daily_average_amount"] == 50.0
    assert gap.loc["2025-01-30", "txn_count_30d"] == 2
    assert gap.loc["2025-01-30", "amount_avg_30d"] == 50.0
    assert gap.loc["2025-01-31", "txn_count_30d"] == 0
    assert pd.isna(gap.loc["2025-01-31", "amount_avg_30d"])
    assert gap.loc["2025-01-07", "amount_max_7d"] == 60.0
    assert gap.loc["2025-01-08", "amount_max_7d"] == 0.0
    assert pd.isna(gap.loc["2025-01-08", "daily_max_amount"])
    assert pd.isna(gap.loc["2025-01-08", "daily_average_amount"])
    assert gap.loc["2025-01-08", "daily_total_amount"] == 0.0
    assert gap.loc["2025-02-10", "amount_avg_30d"] == 10.0
    night = rows.loc["ACC_NIGHT"]
    assert night.loc["2025-01-20", "daily_night_count"] == 1
    assert night.loc["2025-01-20", "daily_distinct_merchants"] == 2
    assert night.loc["2025-01-21", "night_share_7d"] == 0.6667
    tie = rows.loc["ACC_TIE"]
    assert tie.loc["2025-01-30", "daily_total_amount"] == 2.13
    assert tie.loc["2025-01-31", "daily_average_amount"] == 1.0313
    assert list(rows.loc["ACC_LATE"].index) == ["2025-02-14"]


def test_features_match_pandas_with_cent_amounts(spark):
    """Realistic cent amounts: the sums may differ in the last bit with the summation order,
    so a value may round the other way only where the unrounded value is a tie."""
    tx = simulated_transactions(grid=False)
    got = features.daily_account_features(to_raw(spark, tx)).toPandas()
    got[names.TRANSACTION_DATE] = got[names.TRANSACTION_DATE].astype(str)
    want = expected_features(tx)
    keys = list(names.FEATURE_KEYS)
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert got[keys].values.tolist() == want[keys].values.tolist()
    rounded = {"daily_average_amount": 4, "amount_avg_30d": 4}
    for column in names.FEATURE_COLUMNS:
        g, w = got[column].astype(float), want[column].astype(float)
        assert (g.isna() == w.isna()).all(), column
        diff = (g - w).abs()
        if column in rounded:
            step = 10.0 ** -rounded[column]
            # A legitimate mismatch is exactly one rounding step, at a (near-)tie.
            off = diff > TOLERANCE
            assert (diff[off] <= step + TOLERANCE).all(), column
            assert off.sum() <= 3, f"{column}: {off.sum()} rows differ"
        else:
            assert (diff.fillna(0) <= TOLERANCE).all(), column


# -- upsert ---------------------------------------------------------------------------------


def test_upsert_is_idempotent_and_counts_changes(spark, tmp_path, grid_tx):
    small = grid_tx[grid_tx[names.ACCOUNT_ID].isin(["ACC_GAP", "ACC_NIGHT", "ACC000001"])]
    rows = features.daily_account_features(to_raw(spark, small)).persist()
    n = rows.count()
    assert n > 40 and rows.filter(F.col("amount_avg_30d").isNull()).count() > 0
    path = str(tmp_path / "features")
    lakehouse.ensure_table(spark, path, features.FEATURES_SCHEMA)
    keys = list(names.FEATURE_KEYS)

    def content():
        return sorted(tuple(r) for r in spark.read.format("delta").load(path).collect())

    assert lakehouse.is_empty(spark, path)
    assert lakehouse.upsert(spark, path, rows, keys) == {"inserted": n, "updated": 0}
    assert not lakehouse.is_empty(spark, path)
    first = content()
    assert len(first) == n
    # Identical rows (nulls included) are left alone.
    assert lakehouse.upsert(spark, path, rows, keys) == {"inserted": 0, "updated": 0}
    assert content() == first
    # Into the empty table, an append; a rerun commits nothing.
    operations = [r["operation"] for r in lakehouse.history(spark, path).collect()]
    assert operations == ["CREATE TABLE", "WRITE"]

    # One changed value updates exactly one row; a null that becomes a value counts too.
    one = (F.col(names.ACCOUNT_ID) == "ACC_NIGHT") & (
        F.col(names.TRANSACTION_DATE) == F.lit("2025-01-20").cast("date")
    )
    gap = (F.col(names.ACCOUNT_ID) == "ACC_GAP") & (
        F.col(names.TRANSACTION_DATE) == F.lit("2025-01-31").cast("date")
    )
    changed = rows.withColumn(
        "daily_total_amount",
        F.when(one, F.col("daily_total_amount") + 1).otherwise(F.col("daily_total_amount")),
    )
    assert lakehouse.upsert(spark, path, changed, keys) == {"inserted": 0, "updated": 1}
    after = spark.read.format("delta").load(path)
    assert after.count() == n
    assert after.filter(one).first()["daily_total_amount"] == 13.0
    # A null that becomes a value is a change too; a new key is an insert.
    filled = changed.withColumn(
        "amount_avg_30d", F.when(gap, F.lit(1.0)).otherwise(F.col("amount_avg_30d"))
    )
    extra = filled.filter(one).withColumn(names.ACCOUNT_ID, F.lit("ACC_NEW"))
    assert lakehouse.upsert(spark, path, filled.unionByName(extra), keys) == {
        "inserted": 1,
        "updated": 1,
    }
    final = spark.read.format("delta").load(path)
    assert final.count() == n + 1
    assert final.filter(gap).first()["amount_avg_30d"] == 1.0
    assert final.filter(F.col(names.ACCOUNT_ID) == "ACC_NEW").first()["daily_total_amount"] == 13.0
    rows.unpersist()


@pytest.mark.parametrize("write", ["upsert", "append"])
def test_a_write_to_a_table_without_a_new_column_says_how_to_start_again(spark, tmp_path, write):
    path = str(tmp_path / "older")
    older = T.StructType([f for f in features.FEATURES_SCHEMA if f.name != "daily_new_merchants"])
    lakehouse.ensure_table(spark, path, older)
    rows = spark.createDataFrame([], features.FEATURES_SCHEMA)
    with pytest.raises(ValueError, match=r"no column daily_new_merchants.*make reset"):
        if write == "upsert":
            lakehouse.upsert(spark, path, rows, list(names.FEATURE_KEYS))
        else:
            lakehouse.append(spark, path, rows)


def test_days_appended_later_change_no_feature_of_the_period(spark, grid_tx):
    """04 appends the following day to raw; 02 and 03 keep to the simulated period."""
    later, _ = simulator.simulate(CONFIG.following_days(1))
    raw = to_raw(spark, pd.concat([grid_tx, later], ignore_index=True))
    period = features.in_period(raw, CONFIG)
    assert period.count() == len(grid_tx) < raw.count()

    def rows(frame):
        return sorted(tuple(r) for r in features.daily_account_features(frame).collect())

    assert rows(period) == rows(to_raw(spark, grid_tx))
    assert rows(raw) != rows(period)


def test_the_rows_of_new_days_alone_equal_the_whole_tables(spark, daily, grid_tx):
    """The daily step computes only the days the new data touches, from their window."""
    first, last = date(2025, 2, 5), CONFIG.end_date
    raw = to_raw(spark, grid_tx)
    # The table as it stood before ``first``: the rolling windows read its daily features.
    day = F.col(names.TRANSACTION_DATE)
    stored = features.daily_account_features(raw).filter(day < F.lit(first)).localCheckpoint()
    got = features.for_days(raw, stored, first, last).toPandas()
    want = daily[daily[names.TRANSACTION_DATE] >= first]
    assert "ACC_GAP" in set(got[names.ACCOUNT_ID]), "an account idle for longer than the window"
    # ACC_MERCHANTS paid M3 on first - 30 days and again on first: it is not new on first.
    assert_features_equal(got, want)
    # History before the window changes no row of the new days.
    old = grid_tx.iloc[[0]].assign(
        **{names.TRANSACTION_ID: "OLD-1", names.TIMESTAMP: "2024-06-01T12:00:00Z"}
    )
    older = to_raw(spark, pd.concat([grid_tx, old], ignore_index=True))
    assert_features_equal(features.for_days(older, stored, first, last).toPandas(), want)
