"""Feature definitions: daily account features, and the point-in-time transaction vector.

The daily table has one row per account and calendar day, from the account's first
transaction to the last day in the data (idle days included, so "the last 7 rows" are
"the last 7 days"). A transaction is scored with its own attributes plus its account's
row for the *previous* day: nothing from the transaction's own day or later.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from workbook import names
from workbook.simulator import SimulationConfig

FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(names.ACCOUNT_ID, T.StringType(), False),
        T.StructField(names.TRANSACTION_DATE, T.DateType(), False),
        *[
            T.StructField(c, T.LongType() if c in names.COUNT_FEATURES else T.DoubleType())
            for c in names.FEATURE_COLUMNS
        ],
    ]
)


def _is_night(ts: str = names.TIMESTAMP):
    return F.hour(ts) < names.NIGHT_END_HOUR


def in_period(frame: DataFrame, config: SimulationConfig) -> DataFrame:
    """The rows of the simulated period alone: days appended later (by 04) change nothing here."""
    day = F.to_date(names.TIMESTAMP)
    return frame.filter(day.between(F.lit(config.day(config.first_day)), F.lit(config.end_date)))


def midnight(of: date) -> Column:
    """The instant ``of`` begins, in the session's time zone (as ``to_date`` counts days)."""
    return F.lit(str(of)).cast("timestamp")


def on_days(days) -> Column:
    """Rows whose timestamp falls on one of ``days``. Bounds on the timestamp itself, where
    ``to_date(timestamp)`` would hide it: Delta skips the files outside them by their stats."""
    instant = F.col(names.TIMESTAMP)
    return reduce(
        Column.__or__,
        [(instant >= midnight(d)) & (instant < midnight(d + timedelta(days=1))) for d in days],
    )


NEW_MERCHANT_DAYS = 30  # a merchant the account paid on none of this many days before is new


def _new_merchants(tx: DataFrame, earlier: DataFrame | None = None) -> DataFrame:
    """Per account and day of ``tx``: how many of the merchants it paid were new to it.

    Exact for the days whose ``NEW_MERCHANT_DAYS`` days before are in ``tx`` or ``earlier``
    (raw rows of days before ``tx``'s, read only for the pairs ``tx`` holds).
    """
    day = F.col(names.TRANSACTION_DATE)
    pair = [names.ACCOUNT_ID, names.MERCHANT_ID]
    paid = tx.select(*pair, day).distinct().withColumn("_counted", F.lit(True))
    if earlier is not None:
        before = (
            earlier.select(*pair, F.to_date(names.TIMESTAMP).alias(names.TRANSACTION_DATE))
            .join(paid.select(*pair), pair, "left_semi")
            .distinct()
            .withColumn("_counted", F.lit(False))
        )
        paid = paid.unionByName(before)
    last_paid = F.lag(day).over(Window.partitionBy(*pair).orderBy(day))
    is_new = last_paid.isNull() | (F.datediff(day, last_paid) > NEW_MERCHANT_DAYS)
    return (
        paid.withColumn("_new", is_new)
        .filter("_counted")
        .groupBy(*names.FEATURE_KEYS)
        .agg(F.count_if("_new").alias(names.DAILY_NEW_MERCHANTS))
    )


def _daily(raw: DataFrame, earlier: DataFrame | None = None) -> DataFrame:
    """One row per account and day with a transaction: the daily features.

    ``earlier``: the raw rows of the ``NEW_MERCHANT_DAYS`` days before, when ``raw`` lacks them.
    """
    tx = raw.withColumn(names.TRANSACTION_DATE, F.to_date(names.TIMESTAMP))
    daily = tx.groupBy(*names.FEATURE_KEYS).agg(
        F.count(names.TRANSACTION_ID).alias(names.DAILY_TRANSACTION_COUNT),
        F.round(F.sum(names.AMOUNT), 2).alias(names.DAILY_TOTAL_AMOUNT),
        F.round(F.avg(names.AMOUNT), 4).alias(names.DAILY_AVERAGE_AMOUNT),
        F.max(names.AMOUNT).alias(names.DAILY_MAX_AMOUNT),
        # A set per account and day (a handful of merchants): countDistinct would expand
        # every row once per distinct aggregate and shuffle them again.
        F.size(F.collect_set(names.MERCHANT_ID)).alias(names.DAILY_DISTINCT_MERCHANTS),
        F.count(F.when(_is_night(), 1)).alias(names.DAILY_NIGHT_COUNT),
    )
    return daily.join(_new_merchants(tx, earlier), list(names.FEATURE_KEYS))


def daily_account_features(raw: DataFrame) -> DataFrame:
    """One row per account and day with the daily and rolling features."""
    daily = _daily(raw)
    last_day = daily.agg(F.max(names.TRANSACTION_DATE).alias("_last"))
    calendar = (
        daily.groupBy(names.ACCOUNT_ID)
        .agg(F.min(names.TRANSACTION_DATE).alias("_first"))
        .crossJoin(last_day)
        .select(
            names.ACCOUNT_ID,
            F.explode(F.sequence("_first", "_last")).alias(names.TRANSACTION_DATE),
        )
    )
    # Idle days count nothing; their average and maximum amounts stay null.
    undefined_when_idle = (names.DAILY_AVERAGE_AMOUNT, names.DAILY_MAX_AMOUNT)
    zero_when_idle = {c: 0 for c in names.DAILY_FEATURES if c not in undefined_when_idle}
    dense = calendar.join(daily, list(names.FEATURE_KEYS), "left").fillna(zero_when_idle)

    def last(n):
        return (
            Window.partitionBy(names.ACCOUNT_ID)
            .orderBy(names.TRANSACTION_DATE)
            .rowsBetween(-(n - 1), 0)
        )

    def total(column, n):
        return F.sum(column).over(last(n))

    count_7d = total(names.DAILY_TRANSACTION_COUNT, 7)
    count_30d = total(names.DAILY_TRANSACTION_COUNT, 30)
    night_share_7d = F.try_divide(total(names.DAILY_NIGHT_COUNT, 7), count_7d)
    rolling = {
        names.TXN_COUNT_7D: count_7d,
        names.AMOUNT_SUM_7D: F.round(total(names.DAILY_TOTAL_AMOUNT, 7), 2),
        names.AMOUNT_MAX_7D: F.coalesce(F.max(names.DAILY_MAX_AMOUNT).over(last(7)), F.lit(0.0)),
        names.NIGHT_SHARE_7D: F.round(F.coalesce(night_share_7d, F.lit(0.0)), 4),
        names.TXN_COUNT_30D: count_30d,
        names.AMOUNT_AVG_30D: F.round(
            F.try_divide(total(names.DAILY_TOTAL_AMOUNT, 30), count_30d), 4
        ),
    }
    features = dense.select(
        *names.FEATURE_KEYS,
        *names.DAILY_FEATURES,
        *[rolling[c].alias(c) for c in names.ROLLING_FEATURES],
    )
    return features.select([F.col(f.name).cast(f.dataType) for f in FEATURES_SCHEMA])


LOOKBACK_DAYS = 30  # the longest rolling window, in days


def for_days(raw: DataFrame, stored: DataFrame, first: date, last: date) -> DataFrame:
    """The rows of days ``first`` to ``last`` alone, as ``daily_account_features`` gives them.

    The days' own daily features come from raw's rows of those days (and the merchants the
    accounts paid in the ``NEW_MERCHANT_DAYS`` days before); the rolling windows add the
    daily features of the ``LOOKBACK_DAYS`` - 1 days before, as the feature table ``stored``
    holds them (days a late event touched are among the days computed, so those before are
    as they were). So the cost follows the new days, not the history. Each rolling feature
    is an aggregate of the daily rows in its day's window (one grouping, no window functions
    over a calendar of every account and day). Accounts with a stored row on the day before
    ``first`` get a row for every day, as in the whole table, also on days whose window
    holds none of their transactions.
    """
    start = first - timedelta(days=LOOKBACK_DAYS - 1)
    day, target = F.col(names.TRANSACTION_DATE), F.col("_day")
    # Bounds on the timestamp itself, so raw's files outside them are skipped by their stats.
    instant = F.col(names.TIMESTAMP)
    read_from = first - timedelta(days=NEW_MERCHANT_DAYS)
    until = midnight(last + timedelta(days=1))
    window = raw.filter((instant >= midnight(read_from)) & (instant < until))
    new = window.filter(instant >= midnight(first))
    earlier = window.filter(instant < midnight(first))
    before = stored.filter(day.between(F.lit(start), F.lit(first - timedelta(days=1))))
    known_accounts = stored.filter(day == F.lit(first - timedelta(days=1)))
    active_before = before.filter(F.col(names.DAILY_TRANSACTION_COUNT) > 0).select(
        *names.FEATURE_KEYS, *names.DAILY_FEATURES
    )
    # Read three times below: computed once.
    daily = _daily(new, earlier).unionByName(active_before).localCheckpoint()
    # The days to compute: from ``first`` to the newest day with data, as the whole table.
    targets = (
        daily.filter(day >= F.lit(first))
        .agg(F.max(day).alias("_last"))
        .select(F.explode(F.sequence(F.lit(first), "_last")).alias("_day"))
    )
    in_window = day.between(F.date_sub(target, LOOKBACK_DAYS - 1), target)
    windows = daily.join(F.broadcast(targets), in_window)

    def over(n: int, column: str):
        return F.when(day > F.date_sub(target, n), F.col(column))

    def on_the_day(column: str):
        return F.max(F.when(day == target, F.col(column)))

    count_7d = F.sum(over(7, names.DAILY_TRANSACTION_COUNT))
    count_30d = F.sum(names.DAILY_TRANSACTION_COUNT)
    aggregated = windows.groupBy(names.ACCOUNT_ID, "_day").agg(
        *[on_the_day(c).alias(c) for c in names.DAILY_FEATURES],
        count_7d.alias(names.TXN_COUNT_7D),
        F.round(F.sum(over(7, names.DAILY_TOTAL_AMOUNT)), 2).alias(names.AMOUNT_SUM_7D),
        F.max(over(7, names.DAILY_MAX_AMOUNT)).alias(names.AMOUNT_MAX_7D),
        F.round(F.try_divide(F.sum(over(7, names.DAILY_NIGHT_COUNT)), count_7d), 4).alias(
            names.NIGHT_SHARE_7D
        ),
        count_30d.alias(names.TXN_COUNT_30D),
        F.round(F.try_divide(F.sum(names.DAILY_TOTAL_AMOUNT), count_30d), 4).alias(
            names.AMOUNT_AVG_30D
        ),
    )
    # Every account has a row from its first day on: known accounts on every day, the
    # window's new accounts from their first transaction.
    since = (
        known_accounts.select(names.ACCOUNT_ID, F.lit(start).alias("_since"))
        .unionByName(daily.select(names.ACCOUNT_ID, day.alias("_since")))
        .groupBy(names.ACCOUNT_ID)
        .agg(F.min("_since").alias("_since"))
    )
    rows = (
        since.join(F.broadcast(targets), target >= F.col("_since"))
        .join(aggregated, [names.ACCOUNT_ID, "_day"], "left")
        .withColumnRenamed("_day", names.TRANSACTION_DATE)
    )
    # What the whole table holds for a day without activity: counts and sums are zero; the
    # day's average and maximum, and the 30-day average of an empty window, stay null.
    nothing = {c: 0 for c in names.COUNT_FEATURES} | {
        names.DAILY_TOTAL_AMOUNT: 0.0,
        names.AMOUNT_SUM_7D: 0.0,
        names.AMOUNT_MAX_7D: 0.0,
        names.NIGHT_SHARE_7D: 0.0,
    }
    return rows.select(
        [
            (
                F.coalesce(F.col(f.name), F.lit(nothing[f.name]))
                if f.name in nothing
                else F.col(f.name)
            )
            .cast(f.dataType)
            .alias(f.name)
            for f in FEATURES_SCHEMA
        ]
    )


def as_of_date(ts: str = names.TIMESTAMP):
    """The day of the feature row a transaction is scored with: the day before its own."""
    return F.date_sub(F.to_date(ts), 1)


def transaction_features(transactions: DataFrame, features: DataFrame) -> DataFrame:
    """Each transaction with the model inputs, joined to its account's previous-day row.

    Works for batch and streaming ``transactions`` alike (a stream-static join).
    """
    as_of = "_as_of"
    tx = transactions.withColumn(names.TRANSACTION_DATE, F.to_date(names.TIMESTAMP)).withColumn(
        as_of, as_of_date()
    )
    history = features.select(
        names.ACCOUNT_ID,
        F.col(names.TRANSACTION_DATE).alias(as_of),
        F.col(names.DAILY_TRANSACTION_COUNT).alias(names.PREV_DAY_COUNT),
        F.col(names.DAILY_NEW_MERCHANTS).alias(names.PREV_DAY_NEW_MERCHANTS),
        *names.ROLLING_FEATURES,
    )
    joined = tx.join(history, [names.ACCOUNT_ID, as_of], "left")
    amount = F.col(names.AMOUNT)

    def or_zero(column):
        return F.coalesce(F.col(column), F.lit(0))

    # An account without history gets neutral values: no activity, typical amount.
    typical = F.coalesce(F.col(names.AMOUNT_AVG_30D), amount)
    inputs = {
        names.AMOUNT_LOG: F.log1p(amount),
        names.AMOUNT_VS_30D_AVG: F.log((amount + 1) / (typical + 1)),
        names.IS_NIGHT: _is_night().cast("double"),
        names.PREV_DAY_COUNT: or_zero(names.PREV_DAY_COUNT).cast("double"),
        names.TXN_COUNT_7D: or_zero(names.TXN_COUNT_7D).cast("double"),
        names.AMOUNT_SUM_7D_LOG: F.log1p(F.coalesce(names.AMOUNT_SUM_7D, F.lit(0.0))),
        names.AMOUNT_MAX_7D_LOG: F.log1p(F.coalesce(names.AMOUNT_MAX_7D, F.lit(0.0))),
        names.NIGHT_SHARE_7D: F.coalesce(names.NIGHT_SHARE_7D, F.lit(0.0)),
        names.TXN_COUNT_30D: or_zero(names.TXN_COUNT_30D).cast("double"),
        names.PREV_DAY_NEW_MERCHANTS: or_zero(names.PREV_DAY_NEW_MERCHANTS).cast("double"),
    }
    return joined.select(
        *transactions.columns,
        names.TRANSACTION_DATE,
        *[inputs[c].alias(c) for c in names.NUMERIC_INPUTS],
    )


def latest_per_account(features: DataFrame) -> DataFrame:
    """Each account's most recent feature row: what the online store serves."""
    newest = Window.partitionBy(names.ACCOUNT_ID).orderBy(F.col(names.TRANSACTION_DATE).desc())
    return (
        features.withColumn("_rank", F.row_number().over(newest)).filter("_rank = 1").drop("_rank")
    )
