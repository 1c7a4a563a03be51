"""A seeded, deterministic simulator of card transactions with ground-truth fraud.

Every account gets a profile (typical amount, activity, home merchants, currency) from the
seed alone, and each day is generated from ``(seed, day)``, so any range of days is the
same whichever way it is cut. Fraud comes in episodes: a compromised account shows a
burst of transactions over one to three days, with unusual amounts, risky categories and
night-time activity. Labels are returned separately, as a bank learns of fraud later.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from workbook import contract, names

CATEGORIES = {
    "groceries": 0.24,
    "restaurants": 0.15,
    "retail": 0.15,
    "transport": 0.12,
    "entertainment": 0.08,
    "utilities": 0.08,
    "health": 0.06,
    "travel": 0.06,
    "electronics": 0.03,
    "gift_cards": 0.01,
    "jewelry": 0.01,
    "crypto": 0.01,
}
RISKY_CATEGORIES = ("electronics", "gift_cards", "jewelry", "crypto")
TRANSACTION_TYPES = {"purchase": 0.6, "online": 0.25, "withdrawal": 0.1, "transfer": 0.05}
CURRENCY_SHARES = {"EUR": 0.6, "USD": 0.25, "GBP": 0.15}
EPISODE_CALENDAR_DAYS = 64  # fraud episodes start anywhere in this many days from start_date
LEGACY_FLAG_AMOUNT = 1000.0  # the bank's old rule: flag any amount above this
# One kind of malformed event for each of the contract's rules, named by its reason.
MALFORMED_KINDS = contract.REASONS


@dataclass(frozen=True)
class DriftScenario:
    """From ``start_day`` on, the world changes; the days before it stay as they were.

    Fraudsters take up a pattern the first model has not seen: bursts of small online
    payments, in daytime, at merchants new to the account, in ordinary categories (the old
    pattern is large amounts, risky categories, night-time). Legitimate customers shift a
    little: amounts ``amount_shift`` higher and more of them online. The feature
    distributions move from ``start_day``; the labels, which arrive days later, confirm it.
    """

    start_day: int  # days after start_date
    new_fraud_share: float = 0.01  # of accounts, hit by the new pattern within two weeks
    amount_shift: float = 0.15  # legitimate amounts, relative
    online_share: float = 0.40  # of legitimate transactions (0.25 before)


@dataclass(frozen=True)
class SimulationConfig:
    n_transactions: int = 200_000
    days: int = 30
    start_date: str = "2025-01-01"
    seed: int = 42
    first_day: int = 0  # days after start_date where this range begins
    n_accounts: int | None = None  # default: one account per 40 transactions
    compromised_share: float = 0.06
    malformed_share: float = 0.005
    drift: DriftScenario | None = None  # off unless given (01-05 run without it)

    @property
    def accounts(self) -> int:
        return self.n_accounts or max(50, self.n_transactions // 40)

    def day(self, index: int) -> date:
        return date.fromisoformat(self.start_date) + timedelta(days=index)

    @property
    def end_date(self) -> date:
        """The last simulated day."""
        return self.day(self.first_day + self.days - 1)

    def following_days(self, days: int = 1) -> SimulationConfig:
        """The same population and daily volume, for the days right after this range."""
        return replace(
            self,
            first_day=self.first_day + self.days,
            days=days,
            n_transactions=round(self.n_transactions / self.days * days),
            n_accounts=self.accounts,
        )

    def one_day(self, day_index: int) -> SimulationConfig:
        """Day ``day_index`` alone (days after start_date), with this range's daily volume."""
        return replace(
            self,
            first_day=day_index,
            days=1,
            n_transactions=round(self.n_transactions / self.days),
            n_accounts=self.accounts,
        )

    def index_of(self, day: date) -> int:
        return (day - date.fromisoformat(self.start_date)).days

    def drifted(self, day_index: int) -> bool:
        return self.drift is not None and day_index >= self.drift.start_day

    def to_json(self) -> str:
        fields = {**asdict(self), "n_accounts": self.accounts}
        if self.drift is None:  # so a run without drift records what it always did
            del fields["drift"]
        return json.dumps(fields, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SimulationConfig:
        fields = json.loads(text)
        drift = fields.pop("drift", None)
        return cls(**fields, drift=DriftScenario(**drift) if drift else None)


@dataclass(frozen=True)
class Accounts:
    ids: np.ndarray
    log_typical_amount: np.ndarray
    activity: np.ndarray
    home_merchants: np.ndarray
    currency: np.ndarray
    episode_start: np.ndarray  # day index, -1 when never compromised
    episode_days: np.ndarray


def make_accounts(config: SimulationConfig) -> Accounts:
    n = config.accounts
    rng = np.random.default_rng([config.seed, 0])
    n_merchants = max(200, n // 2)
    compromised = rng.random(n) < config.compromised_share
    activity = rng.gamma(2.0, 1.0, n)
    return Accounts(
        ids=np.array([f"ACC{i:06d}" for i in range(n)]),
        log_typical_amount=rng.normal(3.4, 0.7, n),
        activity=activity / activity.sum(),
        home_merchants=rng.integers(0, n_merchants, (n, 8)),
        currency=rng.choice(list(CURRENCY_SHARES), n, p=list(CURRENCY_SHARES.values())),
        episode_start=np.where(compromised, rng.integers(0, EPISODE_CALENDAR_DAYS, n), -1),
        episode_days=rng.integers(1, 4, n),
    )


def _daily_counts(config: SimulationConfig) -> list[int]:
    base, extra = divmod(config.n_transactions, config.days)
    return [base + (1 if i < extra else 0) for i in range(config.days)]


def _pick(rng, choices: dict[str, float], size: int) -> np.ndarray:
    return rng.choice(list(choices), size, p=list(choices.values()))


def simulate_day(config: SimulationConfig, accounts: Accounts, day_index: int, n_normal: int):
    """One day's valid transactions, sorted by time, with their fraud labels."""
    rng = np.random.default_rng([config.seed, 1 + day_index])
    n_merchants = max(200, len(accounts.ids) // 2)

    # Legitimate activity: daytime, amounts around each account's typical amount.
    acc = rng.choice(len(accounts.ids), n_normal, p=accounts.activity)
    night = rng.random(n_normal) < 0.04
    hours = np.where(
        night, rng.uniform(0, 6, n_normal), np.clip(rng.normal(14, 3.5, n_normal), 6, 23.99)
    )
    amounts = np.exp(rng.normal(accounts.log_typical_amount[acc], 0.6))
    categories = _pick(rng, CATEGORIES, n_normal)
    home = rng.random(n_normal) < 0.85
    merchants = np.where(
        home,
        accounts.home_merchants[acc, rng.integers(0, 8, n_normal)],
        rng.integers(0, n_merchants, n_normal),
    )
    types = _pick(rng, TRANSACTION_TYPES, n_normal)
    if config.drifted(day_index):
        amounts, types = _shift_legitimate(config, day_index, amounts, types)

    # Fraud: bursts on accounts whose compromise episode covers this day.
    active = np.flatnonzero(
        (accounts.episode_start >= 0)
        & (accounts.episode_start <= day_index)
        & (day_index < accounts.episode_start + accounts.episode_days)
    )
    burst = 2 + rng.poisson(3, len(active))
    f_acc = np.repeat(active, burst)
    n_fraud = len(f_acc)
    f_hours = np.where(
        rng.random(n_fraud) < 0.45, rng.uniform(0, 6, n_fraud), rng.uniform(0, 24, n_fraud)
    )
    f_scale = np.where(
        rng.random(n_fraud) < 0.65, rng.uniform(3, 12, n_fraud), rng.uniform(0.5, 2, n_fraud)
    )
    f_amounts = np.exp(accounts.log_typical_amount[f_acc]) * f_scale
    f_categories = np.where(
        rng.random(n_fraud) < 0.6,
        rng.choice(RISKY_CATEGORIES, n_fraud),
        _pick(rng, CATEGORIES, n_fraud),
    )
    f_merchants = rng.integers(0, n_merchants, n_fraud)
    f_types = np.where(rng.random(n_fraud) < 0.6, "online", _pick(rng, TRANSACTION_TYPES, n_fraud))
    if config.drifted(day_index):
        new = _new_pattern(config, accounts, day_index, n_merchants)
        f_acc, f_hours, f_amounts, f_categories, f_merchants, f_types = (
            np.concatenate([base, extra])
            for base, extra in zip(
                (f_acc, f_hours, f_amounts, f_categories, f_merchants, f_types), new, strict=True
            )
        )
        n_fraud = len(f_acc)

    all_acc = np.concatenate([acc, f_acc])
    seconds = (np.concatenate([hours, f_hours]) * 3600).astype(np.int64)
    day_start = np.datetime64(config.day(day_index), "s")
    frame = pd.DataFrame(
        {
            names.TIMESTAMP: day_start + seconds.astype("timedelta64[s]"),
            names.ACCOUNT_ID: accounts.ids[all_acc],
            names.AMOUNT: np.round(np.concatenate([amounts, f_amounts]), 2),
            names.CURRENCY: accounts.currency[all_acc],
            names.TRANSACTION_TYPE: np.concatenate([types, f_types]),
            names.MERCHANT_ID: [f"M{m:06d}" for m in np.concatenate([merchants, f_merchants])],
            names.CATEGORY: np.concatenate([categories, f_categories]),
            names.LABEL: np.concatenate([np.zeros(n_normal, int), np.ones(n_fraud, int)]),
        }
    )
    frame = frame.sort_values([names.TIMESTAMP, names.ACCOUNT_ID, names.AMOUNT], kind="stable")
    frame = frame.reset_index(drop=True)
    stamp = config.day(day_index).strftime("%Y%m%d")
    frame.insert(0, names.TRANSACTION_ID, [f"TX{stamp}-{i:07d}" for i in range(len(frame))])
    frame[names.IS_FLAGGED] = frame[names.AMOUNT] > LEGACY_FLAG_AMOUNT
    frame[names.TIMESTAMP] = frame[names.TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame


def _shift_legitimate(config: SimulationConfig, day_index: int, amounts, types):
    """Legitimate behaviour after the drift day: higher amounts, more of them online."""
    drift = config.drift
    rng = np.random.default_rng([config.seed, 60_000 + day_index])  # a stream of its own
    before = TRANSACTION_TYPES["online"]
    to_online = rng.random(len(types)) < (drift.online_share - before) / (1 - before)
    return amounts * (1 + drift.amount_shift), np.where(to_online, "online", types)


def _new_pattern(config: SimulationConfig, accounts: Accounts, day_index: int, n_merchants: int):
    """The new fraud of the drift scenario on ``day_index``: accounts, hours, amounts, ..."""
    drift = config.drift
    n = len(accounts.ids)
    pick = np.random.default_rng([config.seed, 3])  # which accounts, when: fixed per seed
    hit = pick.random(n) < drift.new_fraud_share
    start = drift.start_day + pick.integers(0, 14, n)
    length = pick.integers(2, 5, n)
    active = np.flatnonzero(hit & (start <= day_index) & (day_index < start + length))
    rng = np.random.default_rng([config.seed, 70_000 + day_index])
    acc = np.repeat(active, 6 + rng.poisson(4, len(active)))
    k = len(acc)
    ordinary = [c for c in CATEGORIES if c not in RISKY_CATEGORIES]
    return (
        acc,
        rng.uniform(9, 18, k),  # office hours
        np.exp(accounts.log_typical_amount[acc]) * rng.uniform(0.1, 0.5, k),  # small
        rng.choice(ordinary, k),
        rng.integers(0, n_merchants, k),  # new to the account, almost surely
        np.full(k, "online"),
    )


def simulate(config: SimulationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All valid transactions of the configured range, and their labels."""
    accounts = make_accounts(config)
    days = [simulate_day(config, accounts, day_index, n) for day_index, n in day_plan(config)]
    frame = pd.concat(days, ignore_index=True)
    return split_labels(frame)


def split_labels(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = frame[[names.TRANSACTION_ID, names.LABEL]].copy()
    return frame.drop(columns=[names.LABEL]), labels


def malformed_events(
    config: SimulationConfig, valid: pd.DataFrame, day_index: int
) -> list[tuple[str, str | bytes]]:
    """Hostile copies of some valid events, as (kind, line) pairs: bytes if not UTF-8."""
    rng = np.random.default_rng([config.seed, 10_000 + day_index])
    n = math.ceil(len(valid) * config.malformed_share)
    rows = valid.iloc[rng.integers(0, len(valid), n)].to_dict("records")
    stamp = config.day(day_index).strftime("%Y%m%d")
    events = []
    for i, row in enumerate(rows):
        kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        if kind != "duplicate_transaction_id":
            row[names.TRANSACTION_ID] = f"BAD{stamp}-{i:05d}"
        events.append((kind, contract.example_of(kind, row)))
    return events


def day_plan(config: SimulationConfig) -> list[tuple[int, int]]:
    """(day index, valid transactions before fraud) for each day of the range."""
    return [(config.first_day + i, n) for i, n in enumerate(_daily_counts(config))]


def event_lines(config: SimulationConfig):
    """Per day: (day, JSON lines as they arrive, number of valid events, malformed kinds)."""
    accounts = make_accounts(config)
    for day_index, n in day_plan(config):
        lines, n_valid, kinds = day_events(config, accounts, day_index, n)
        yield config.day(day_index), lines, n_valid, kinds


def day_events(config: SimulationConfig, accounts: Accounts, day_index: int, n_normal: int):
    """One day's JSON lines in the order they arrive, its number of valid events, and the
    malformed kinds among them."""
    valid, _ = split_labels(simulate_day(config, accounts, day_index, n_normal))
    malformed = malformed_events(config, valid, day_index)
    lines = [json.dumps(r) for r in valid.to_dict("records")] + [line for _, line in malformed]
    order = np.random.default_rng([config.seed, 20_000 + day_index]).permutation(len(lines))
    return [lines[j] for j in order], len(valid), [k for k, _ in malformed]
