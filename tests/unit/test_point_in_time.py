"""transaction_features is point-in-time correct: nothing from the transaction's day or later."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from workbook import features, ingest, names, simulator
from workbook.simulator import SimulationConfig

pytestmark = pytest.mark.spark

D = date(2025, 1, 11)  # the burst day
BURST = 50
BURST_AMOUNT = 500.0
NORMAL_AMOUNT = 20.0


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, second).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def event(tx_id: str, ts: str, account: str, amount: float, merchant: str = "M1") -> dict:
    return {
        names.TRANSACTION_ID: tx_id,
        names.TIMESTAMP: ts,
        names.ACCOUNT_ID: account,
        names.AMOUNT: amount,
        names.CURRENCY: "EUR",
        names.TRANSACTION_TYPE: "purchase",
        names.MERCHANT_ID: merchant,
        names.CATEGORY: "retail",
        names.IS_FLAGGED: False,
    }


def to_raw(spark, events: pd.DataFrame | list[dict]):
    """Events as the raw table holds them (ingest.RAW_SCHEMA, real UTC timestamps)."""
    frame = pd.DataFrame(events).assign(**{names.BATCH_ID: 0})
    sdf = spark.createDataFrame(frame)
    return sdf.select(
        *[
            (
                F.to_timestamp(F.col(f.name), "yyyy-MM-dd'T'HH:mm:ssX")
                if f.name == names.TIMESTAMP
                else F.col(f.name).cast(f.dataType)
            ).alias(f.name)
            for f in ingest.RAW_SCHEMA
        ]
    )


def burst_history() -> list[dict]:
    rows = []
    # ACC_BURST: one daytime purchase a day for ten days (the last at 23:59:59 on D-1),
    # then a night-time burst on D (the first at exactly midnight), then one on D+1.
    for k in range(10, 0, -1):
        day = D - timedelta(days=k)
        ts = at(day, 23, 59, 59) if k == 1 else at(day, 12)
        rows.append(event(f"B-{day}", ts, "ACC_BURST", NORMAL_AMOUNT))
    for i in range(BURST):
        ts = at(D, 0) if i == 0 else at(D, i % 5, i)
        rows.append(event(f"BURST-{i:02d}", ts, "ACC_BURST", BURST_AMOUNT, f"M{i}"))
    rows.append(event("B-after", at(D + timedelta(days=1), 13), "ACC_BURST", 30.0))
    # ACC_NEW: first seen on D.
    rows.append(event("NEW-1", at(D, 15), "ACC_NEW", 80.0))
    rows.append(event("NEW-2", at(D + timedelta(days=1), 9), "ACC_NEW", 10.0))
    # ACC_IDLE: active three days before D only.
    rows.append(event("IDLE-1", at(D - timedelta(days=3), 2), "ACC_IDLE", 40.0))
    rows.append(event("IDLE-2", at(D, 10), "ACC_IDLE", 40.0))
    # ACC_OLD: last active 40 days before D, so its 30-day window is empty.
    rows.append(event("OLD-1", at(D - timedelta(days=40), 10), "ACC_OLD", 100.0))
    rows.append(event("OLD-2", at(D, 10), "ACC_OLD", 50.0))
    return rows


@pytest.fixture(scope="module")
def scored(spark):
    """Model inputs of every hand-made transaction, keyed by transaction id."""
    raw = to_raw(spark, burst_history())
    daily = features.daily_account_features(raw)
    result = features.transaction_features(raw, daily)
    assert result.columns == [
        *raw.columns,
        names.TRANSACTION_DATE,
        *names.NUMERIC_INPUTS,
    ]
    rows = result.collect()
    assert len(rows) == raw.count()
    return {r[names.TRANSACTION_ID]: r.asDict() for r in rows}


def assert_inputs(row: dict, **expected: float) -> None:
    for name, value in expected.items():
        assert math.isclose(row[name], value, rel_tol=0, abs_tol=1e-9), (
            f"{row[names.TRANSACTION_ID]} {name}: got {row[name]}, want {value}"
        )


def test_burst_day_sees_only_the_day_before(scored):
    burst = [row for tx_id, row in scored.items() if tx_id.startswith("BURST-")]
    assert len(burst) == BURST
    for row in burst:
        assert row[names.TRANSACTION_DATE] == D
        assert_inputs(
            row,
            prev_day_count=1,  # D-1's single purchase, at 23:59:59; none of the burst
            txn_count_7d=7,
            txn_count_30d=10,
            amount_sum_7d_log=math.log1p(7 * NORMAL_AMOUNT),
            amount_max_7d_log=math.log1p(NORMAL_AMOUNT),
            night_share_7d=0.0,
            amount_log=math.log1p(BURST_AMOUNT),
            amount_vs_30d_avg=math.log((BURST_AMOUNT + 1) / (NORMAL_AMOUNT + 1)),
        )
    # Midnight and the early hours are night; the burst is all night-time.
    assert {row["is_night"] for row in burst} == {1.0}


def test_day_after_the_burst_sees_it(scored):
    row = scored["B-after"]
    assert row[names.TRANSACTION_DATE] == D + timedelta(days=1)
    count_7d = 6 + BURST  # D-6 .. D-1 and the burst on D
    total_30d = 10 * NORMAL_AMOUNT + BURST * BURST_AMOUNT
    assert_inputs(
        row,
        prev_day_count=BURST,
        txn_count_7d=count_7d,
        txn_count_30d=10 + BURST,
        amount_sum_7d_log=math.log1p(6 * NORMAL_AMOUNT + BURST * BURST_AMOUNT),
        amount_max_7d_log=math.log1p(BURST_AMOUNT),
        night_share_7d=round(BURST / count_7d, 4),
        is_night=0.0,
        amount_vs_30d_avg=math.log(31 / (round(total_30d / (10 + BURST), 4) + 1)),
    )


def test_new_account_gets_neutral_defaults(scored):
    row = scored["NEW-1"]
    assert_inputs(
        row,
        prev_day_count=0,
        txn_count_7d=0,
        txn_count_30d=0,
        amount_sum_7d_log=0.0,
        amount_max_7d_log=0.0,
        night_share_7d=0.0,
        amount_vs_30d_avg=0.0,
        amount_log=math.log1p(80.0),
        is_night=0.0,
    )
    # The next day it has a history: its first day.
    assert_inputs(
        scored["NEW-2"],
        prev_day_count=1,
        txn_count_7d=1,
        txn_count_30d=1,
        amount_sum_7d_log=math.log1p(80.0),
        amount_max_7d_log=math.log1p(80.0),
        amount_vs_30d_avg=math.log(11 / 81),
    )


def test_idle_day_before_still_has_a_window(scored):
    assert_inputs(
        scored["IDLE-2"],
        prev_day_count=0,
        txn_count_7d=1,
        txn_count_30d=1,
        night_share_7d=1.0,  # the one purchase in the week was at 02:00
        amount_max_7d_log=math.log1p(40.0),
        amount_vs_30d_avg=0.0,
    )
    assert scored["IDLE-1"]["is_night"] == 1.0


def test_account_with_an_empty_30_day_window_uses_the_amount_itself(scored):
    assert_inputs(
        scored["OLD-2"],
        prev_day_count=0,
        txn_count_7d=0,
        txn_count_30d=0,
        amount_max_7d_log=0.0,
        amount_vs_30d_avg=0.0,
    )
    assert math.isfinite(scored["OLD-2"]["amount_vs_30d_avg"])


# -- property: the future does not leak ------------------------------------------------------

PROPERTY_CONFIG = SimulationConfig(n_transactions=1500, days=20, n_accounts=60, seed=11)
CUT_DAYS = (date(2025, 1, 6), date(2025, 1, 14))


def tamper_from(tx: pd.DataFrame, cut: date, seed: int) -> pd.DataFrame:
    """The same history before ``cut``; from ``cut`` on, changed, thinned and added to."""
    rng = np.random.default_rng(seed)
    day = pd.to_datetime(tx[names.TIMESTAMP]).dt.date
    before, after = tx[day < cut], tx[day >= cut].copy()
    after[names.AMOUNT] = np.round(after[names.AMOUNT] * rng.uniform(0.1, 20, len(after)), 2)
    after[names.MERCHANT_ID] = "M999999"
    after[names.TIMESTAMP] = after[names.TIMESTAMP].str.slice(0, 11) + "03:00:00Z"
    after = after[rng.random(len(after)) < 0.6]
    accounts = tx[names.ACCOUNT_ID].unique()[:10].tolist() + ["ACC_BRAND_NEW"]
    extra = [
        event(f"EXTRA-{i}", at(cut + timedelta(days=i % 3), 4, i % 60), account, 900.0 + i)
        for i, account in enumerate(accounts * 5)
    ]
    return pd.concat([before, after, pd.DataFrame(extra)], ignore_index=True)


def inputs_of(spark, transactions, history: pd.DataFrame) -> dict[str, tuple]:
    daily = features.daily_account_features(to_raw(spark, history))
    rows = features.transaction_features(transactions, daily).collect()
    return {r[names.TRANSACTION_ID]: tuple(r[c] for c in names.NUMERIC_INPUTS) for r in rows}


@pytest.mark.parametrize("cut", CUT_DAYS, ids=str)
def test_data_from_the_day_on_does_not_change_the_inputs(spark, cut):
    tx, _ = simulator.simulate(PROPERTY_CONFIG)
    day = pd.to_datetime(tx[names.TIMESTAMP]).dt.date
    scored_tx = to_raw(spark, tx[day == cut])
    n_scored = int((day == cut).sum())
    assert n_scored > 0

    reference = inputs_of(spark, scored_tx, tx)
    assert len(reference) == n_scored
    # The inputs carry history (not all defaults), so the comparison means something.
    assert sum(values[3] > 0 for values in reference.values()) > n_scored // 4

    variants = {
        "history only": tx[day < cut],
        "tampered from the day on": tamper_from(tx, cut, seed=1),
        "tampered differently": tamper_from(tx, cut, seed=2),
    }
    for name, history in variants.items():
        got = inputs_of(spark, scored_tx, history)
        assert got.keys() == reference.keys(), name
        for tx_id, values in reference.items():
            assert np.allclose(got[tx_id], values, rtol=0, atol=1e-9), (name, tx_id)

    # Sanity: tampering with the day BEFORE the cut does change some inputs.
    before = tamper_from(tx, cut - timedelta(days=1), seed=1)
    before = before[pd.to_datetime(before[names.TIMESTAMP]).dt.date != cut]
    changed = inputs_of(spark, scored_tx, pd.concat([before, tx[day == cut]]))
    assert any(
        not np.allclose(changed[tx_id], values, rtol=0, atol=1e-9)
        for tx_id, values in reference.items()
    )
