"""The simulator run by Spark's executors gives the pandas simulator's days, row for row."""

from __future__ import annotations

from functools import partial

import pandas as pd
import pytest

from workbook import contract, names, simulator, sources, spark_simulator
from workbook.simulator import DriftScenario, SimulationConfig

# Days after the start, with drift from the third: every branch of a day's generation.
CONFIG = SimulationConfig(
    n_transactions=3_000, days=5, first_day=2, n_accounts=150, drift=DriftScenario(start_day=4)
)


def test_executors_make_the_pandas_days_row_for_row(spark):
    made = spark_simulator.transactions(spark, CONFIG)
    assert made.rdd.getNumPartitions() > 1  # days made in parallel
    transactions, labels = simulator.simulate(CONFIG)
    expected = transactions.assign(**{names.LABEL: labels[names.LABEL].astype("int32")})
    pd.testing.assert_frame_equal(made.toPandas(), expected)


def test_the_transactions_are_the_contracts_fields_and_the_label():
    fields = spark_simulator.TRANSACTIONS_SCHEMA.fieldNames()
    assert fields == [*contract.EVENT_FIELDS, names.LABEL]


def test_executors_send_the_same_lines_and_skip_what_was_sent(spark, tmp_path):
    expected, landing = tmp_path / "expected", tmp_path / "landing"
    totals = sources.land_files(CONFIG, expected, progress=False)
    skipped = CONFIG.day(CONFIG.first_day + 1)
    send = partial(sources._land_file, landing)
    per_day = spark_simulator.send_days(spark, CONFIG, send, skip={skipped}, progress=False)

    assert list(per_day["day"]) == [CONFIG.day(i) for i, _ in simulator.day_plan(CONFIG)]
    assert per_day["valid_events"].sum() == totals["valid_events"]
    assert per_day["malformed_events"].sum() == totals["malformed_events"]
    assert list(per_day["sent"]) == [day != skipped for day in per_day["day"]]
    sent = sorted(p.name for p in landing.iterdir())
    assert sent == sorted(p.name for p in expected.iterdir() if skipped.isoformat() not in p.name)
    for name in sent:
        assert (landing / name).read_bytes() == (expected / name).read_bytes()


def test_a_failing_day_raises_on_the_driver_with_its_reason(spark, tmp_path):
    def send(day, lines):
        raise OSError(f"no room for {day}")

    with pytest.raises(RuntimeError, match=r"days published: a task failed: OSError: no room"):
        spark_simulator.send_days(spark, CONFIG, send, progress=False)
