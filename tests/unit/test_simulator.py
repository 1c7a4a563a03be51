"""The simulator: deterministic, schema-true, composable by day, with plausible fraud."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from workbook import contract, intake, names, simulator, sources
from workbook.simulator import SimulationConfig

SMALL = SimulationConfig(n_transactions=4000, days=4, n_accounts=120)
# Enough accounts and days for a handful of fraud episodes to fall in the range.
FRAUDY = SimulationConfig(n_transactions=20_000, days=30, n_accounts=500)


def lines_by_day(config: SimulationConfig) -> dict[date, list[str]]:
    """The JSON lines that arrive on each day of ``config``."""
    return {day: lines for day, lines, *_ in simulator.event_lines(config)}


@pytest.fixture(scope="module")
def fraudy():
    transactions, labels = simulator.simulate(FRAUDY)
    return transactions, labels


def test_same_config_gives_identical_frames():
    tx_a, labels_a = simulator.simulate(SMALL)
    tx_b, labels_b = simulator.simulate(SMALL)
    pd.testing.assert_frame_equal(tx_a, tx_b)
    pd.testing.assert_frame_equal(labels_a, labels_b)
    assert list(simulator.event_lines(SMALL)) == list(simulator.event_lines(SMALL))


def test_different_seed_gives_different_frames():
    tx_a, _ = simulator.simulate(SMALL)
    tx_b, _ = simulator.simulate(replace(SMALL, seed=SMALL.seed + 1))
    assert not tx_a[names.AMOUNT].equals(tx_b[names.AMOUNT])
    assert not tx_a[names.ACCOUNT_ID].equals(tx_b[names.ACCOUNT_ID])


def test_columns_and_values_match_the_seed_schema():
    tx, labels = simulator.simulate(SMALL)
    assert list(tx.columns) == list(contract.EVENT_FIELDS)
    assert list(labels.columns) == [names.TRANSACTION_ID, names.LABEL]
    assert len(tx) >= SMALL.n_transactions
    assert tx[names.TRANSACTION_ID].is_unique
    assert tx[names.TRANSACTION_ID].str.fullmatch(r"TX\d{8}-\d{7}").all()
    assert tx[names.ACCOUNT_ID].str.fullmatch(r"ACC\d{6}").all()
    assert tx[names.ACCOUNT_ID].nunique() <= SMALL.accounts
    assert tx[names.MERCHANT_ID].str.fullmatch(r"M\d{6}").all()
    assert set(tx[names.CURRENCY]) <= set(contract.KNOWN_CURRENCIES)
    assert set(tx[names.CATEGORY]) <= set(simulator.CATEGORIES)
    assert set(tx[names.TRANSACTION_TYPE]) <= set(simulator.TRANSACTION_TYPES)
    assert tx[names.IS_FLAGGED].dtype == bool
    assert (tx[names.IS_FLAGGED] == (tx[names.AMOUNT] > simulator.LEGACY_FLAG_AMOUNT)).all()

    amounts = tx[names.AMOUNT]
    assert amounts.dtype == np.float64
    assert (amounts > 0).all() and (amounts < contract.MAX_AMOUNT).all()
    assert np.allclose(amounts, amounts.round(2), rtol=0, atol=1e-9)

    # Timestamps are ISO-8601 UTC text the ingestion's format accepts, inside the range.
    assert tx[names.TIMESTAMP].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    stamps = pd.to_datetime(tx[names.TIMESTAMP], format="%Y-%m-%dT%H:%M:%SZ")
    start = datetime(2025, 1, 1) + timedelta(days=SMALL.first_day)
    end = start + timedelta(days=SMALL.days)
    assert stamps.min() >= start and stamps.max() < end
    assert stamps.dt.date.nunique() == SMALL.days
    # Each day is sorted by time and ids follow that order.
    assert stamps.is_monotonic_increasing


def test_day_ranges_compose():
    whole, whole_labels = simulator.simulate(SMALL)
    per_day = SMALL.n_transactions // SMALL.days
    cuts = [
        replace(SMALL, first_day=i, days=1, n_transactions=per_day, n_accounts=SMALL.accounts)
        for i in range(SMALL.days)
    ]
    parts = [simulator.simulate(c) for c in cuts]
    pd.testing.assert_frame_equal(whole, pd.concat([p[0] for p in parts], ignore_index=True))
    pd.testing.assert_frame_equal(whole_labels, pd.concat([p[1] for p in parts], ignore_index=True))

    # following_days keeps the population and the daily volume: two days, then two more.
    first = replace(SMALL, days=2, n_transactions=2 * per_day, n_accounts=SMALL.accounts)
    second = first.following_days(2)
    assert (second.first_day, second.days, second.n_transactions) == (2, 2, 2 * per_day)
    assert second.accounts == SMALL.accounts
    chained = pd.concat([simulator.simulate(first)[0], simulator.simulate(second)[0]])
    pd.testing.assert_frame_equal(whole, chained.reset_index(drop=True))

    # Event lines (valid and malformed ones) compose the same way.
    assert lines_by_day(SMALL) == {**lines_by_day(first), **lines_by_day(second)}


def test_following_days_keeps_accounts_when_volume_implies_fewer():
    config = SimulationConfig(n_transactions=8000, days=4)  # 200 accounts by default
    nxt = config.following_days(1)
    assert nxt.n_transactions == 2000
    assert nxt.accounts == config.accounts == 200


def test_fraud_share_is_small_but_not_zero(fraudy):
    _, labels = fraudy
    assert set(labels[names.LABEL].unique()) == {0, 1}
    share = labels[names.LABEL].mean()
    assert 0.001 < share < 0.05, share


def test_fraud_amounts_are_higher_on_median(fraudy):
    tx, labels = fraudy
    amount = tx[names.AMOUNT]
    fraud = labels[names.LABEL] == 1
    assert amount[fraud].median() > 1.5 * amount[~fraud].median()
    # Fraud also leans to risky categories and night time.
    risky = tx[names.CATEGORY].isin(simulator.RISKY_CATEGORIES)
    assert risky[fraud].mean() > 5 * risky[~fraud].mean()
    hour = pd.to_datetime(tx[names.TIMESTAMP]).dt.hour
    assert (hour[fraud] < 6).mean() > 2 * (hour[~fraud] < 6).mean()


def test_labels_align_with_transactions(fraudy):
    tx, labels = fraudy
    assert len(labels) == len(tx)
    assert labels[names.TRANSACTION_ID].tolist() == tx[names.TRANSACTION_ID].tolist()
    assert labels[names.LABEL].isin([0, 1]).all()
    # The fraud rows belong to the compromised accounts whose episode covers their day.
    accounts = simulator.make_accounts(FRAUDY)
    index = {a: i for i, a in enumerate(accounts.ids)}
    fraud_tx = tx[labels[names.LABEL] == 1]
    for account, stamp in zip(fraud_tx[names.ACCOUNT_ID], fraud_tx[names.TIMESTAMP], strict=True):
        i = index[account]
        day = (datetime.fromisoformat(stamp[:10]) - datetime(2025, 1, 1)).days
        start = accounts.episode_start[i]
        assert start >= 0 and start <= day < start + accounts.episode_days[i]


def _day_frame(config: SimulationConfig, day_index: int) -> pd.DataFrame:
    accounts = simulator.make_accounts(config)
    frame = simulator.simulate_day(config, accounts, day_index, config.n_transactions)
    return simulator.split_labels(frame)[0]


def test_malformed_events_cover_every_kind():
    config = replace(SMALL, malformed_share=0.03)
    valid = _day_frame(config, 0)
    events = simulator.malformed_events(config, valid, 0)
    assert len(events) == math.ceil(len(valid) * config.malformed_share)
    kinds = [kind for kind, _ in events]
    assert set(kinds) == set(simulator.MALFORMED_KINDS)
    assert events == simulator.malformed_events(config, valid, 0)  # deterministic

    valid_lines = {json.dumps(r) for r in valid.to_dict("records")}
    clock = max(contract.parse_timestamp(t) for t in valid[names.TIMESTAMP])
    for kind, line in events:
        # Each kind is named by the contract's reason, and the contract refuses it for it.
        if kind == "duplicate_transaction_id":
            assert line in valid_lines  # valid on its own: it is the second copy
        else:
            assert contract.check(line, clock) == kind
        if kind not in (
            "oversized_event",
            "invalid_encoding",
            "malformed_json",
            "duplicate_transaction_id",
        ):
            assert json.loads(line)[names.TRANSACTION_ID].startswith("BAD")


def test_event_lines_mix_valid_and_malformed():
    config = replace(SMALL, malformed_share=0.03)
    valid = _day_frame(config, 0)
    one_day = replace(config, days=1, n_transactions=config.n_transactions)
    ((day, day_lines, n_valid, kinds),) = list(simulator.event_lines(one_day))
    malformed = simulator.malformed_events(config, valid, 0)
    expected_valid = [json.dumps(r) for r in valid.to_dict("records")]
    expected_bad = [text for _, text in malformed]
    key = intake.as_bytes
    assert day == date(2025, 1, 1)
    assert n_valid == len(valid)
    assert kinds == [kind for kind, _ in malformed]
    assert sorted(day_lines, key=key) == sorted(expected_valid + expected_bad, key=key)
    assert day_lines != expected_valid + expected_bad  # shuffled, not appended


def test_land_files_is_idempotent(tmp_path):
    config = SimulationConfig(n_transactions=600, days=3, n_accounts=60)
    landing = tmp_path / "landing"
    expected = lines_by_day(config)
    totals = sources.land_files(config, landing)
    n_valid = len(simulator.simulate(config)[0])
    n_lines = sum(len(lines) for lines in expected.values())
    assert totals == {"days": 3, "valid_events": n_valid, "malformed_events": n_lines - n_valid}
    paths = sorted(landing.iterdir())
    assert [p.name for p in paths] == [
        "transactions-2025-01-01.jsonl",
        "transactions-2025-01-02.jsonl",
        "transactions-2025-01-03.jsonl",
    ]
    for path, lines in zip(paths, expected.values(), strict=True):
        assert path.read_text() == "\n".join(lines) + "\n"

    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in paths}
    assert sources.land_files(config, landing) == totals
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in paths}
    assert after == before
    assert sorted(landing.iterdir()) == paths

    # A damaged file is rewritten; the intact ones are left alone.
    paths[1].write_text("garbage\n")
    sources.land_files(config, landing)
    assert paths[1].read_text() == "\n".join(expected[config.day(1)]) + "\n"
    assert paths[0].stat().st_mtime_ns == before[paths[0]][0]
    assert sorted(landing.iterdir()) == paths  # no temporary files left behind


# The drift scenario (notebook 06): from its day on, fraud changes and legitimate use shifts.
DRIFT_DAY = 20
DRIFTING = replace(FRAUDY, drift=simulator.DriftScenario(start_day=DRIFT_DAY, new_fraud_share=0.05))


@pytest.fixture(scope="module")
def drifting():
    transactions, labels = simulator.simulate(DRIFTING)
    return transactions.merge(labels, on=names.TRANSACTION_ID)


def day_of(frame: pd.DataFrame) -> pd.Series:
    """Each transaction's day index (its date's days after the start date)."""
    dates = pd.to_datetime(frame[names.TIMESTAMP].str[:10])
    return (dates - pd.Timestamp(FRAUDY.start_date)).dt.days


def test_days_before_the_drift_are_unchanged(fraudy, drifting):
    tx, labels = fraudy
    before = tx.merge(labels, on=names.TRANSACTION_ID)
    before = before[day_of(before) < DRIFT_DAY].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        drifting[day_of(drifting) < DRIFT_DAY].reset_index(drop=True), before
    )
    # Off by default, and a run without drift records its settings as it always did.
    assert SimulationConfig().drift is None and "drift" not in json.loads(SMALL.to_json())
    assert SimulationConfig.from_json(DRIFTING.to_json()) == DRIFTING


def test_the_new_fraud_is_small_daytime_online_at_new_merchants(fraudy, drifting):
    after = drifting[day_of(drifting) >= DRIFT_DAY]
    fraud = after[after[names.LABEL] == 1]
    hours = pd.to_datetime(fraud[names.TIMESTAMP]).dt.hour
    pattern = (
        (fraud[names.TRANSACTION_TYPE] == "online")
        & hours.between(9, 17)
        & ~fraud[names.CATEGORY].isin(simulator.RISKY_CATEGORIES)
    )
    assert pattern.mean() > 0.5, "most fraud after the drift day follows the new pattern"
    # Smaller than the account's usual payments, where the old pattern was larger.
    legit = drifting[drifting[names.LABEL] == 0].groupby(names.ACCOUNT_ID)[names.AMOUNT].median()
    relative = fraud[pattern][names.AMOUNT] / fraud[pattern][names.ACCOUNT_ID].map(legit)
    assert relative.median() < 0.5
    # At merchants the account never paid before the drift day.
    seen = set(
        zip(
            drifting[day_of(drifting) < DRIFT_DAY][names.ACCOUNT_ID],
            drifting[day_of(drifting) < DRIFT_DAY][names.MERCHANT_ID],
            strict=True,
        )
    )
    new = [
        (a, m) not in seen
        for a, m in zip(
            fraud[pattern][names.ACCOUNT_ID], fraud[pattern][names.MERCHANT_ID], strict=True
        )
    ]
    assert np.mean(new) > 0.95
    # Without drift, the same days have no such fraud.
    tx, labels = fraudy
    plain = tx.merge(labels, on=names.TRANSACTION_ID)
    plain_fraud = plain[(day_of(plain) >= DRIFT_DAY) & (plain[names.LABEL] == 1)]
    assert len(fraud) > 2 * len(plain_fraud)


def test_legitimate_use_shifts_a_little(fraudy, drifting):
    tx, labels = fraudy
    plain = tx.merge(labels, on=names.TRANSACTION_ID)
    after = [f[(day_of(f) >= DRIFT_DAY) & (f[names.LABEL] == 0)] for f in (plain, drifting)]
    ratio = after[1][names.AMOUNT].median() / after[0][names.AMOUNT].median()
    assert ratio == pytest.approx(1 + DRIFTING.drift.amount_shift, abs=0.01)
    online = [(f[names.TRANSACTION_TYPE] == "online").mean() for f in after]
    assert online[0] == pytest.approx(0.25, abs=0.02)
    assert online[1] == pytest.approx(DRIFTING.drift.online_share, abs=0.02)


def test_the_drift_is_deterministic():
    first = simulator.simulate(replace(DRIFTING, days=DRIFT_DAY + 3))
    again = simulator.simulate(replace(DRIFTING, days=DRIFT_DAY + 3))
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_one_day_is_that_day_of_the_range():
    day = SMALL.one_day(2)
    assert (day.first_day, day.days, day.accounts) == (2, 1, SMALL.accounts)
    assert SMALL.index_of(SMALL.day(2)) == 2
    whole, _ = simulator.simulate(SMALL)
    alone, _ = simulator.simulate(day)
    pd.testing.assert_frame_equal(
        alone, whole[whole[names.TIMESTAMP].str[:10] == str(SMALL.day(2))].reset_index(drop=True)
    )
