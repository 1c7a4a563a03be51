"""The benchmark's single-machine reference computes the same features as Spark."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from benchmarks import common, features
from workbook import names
from workbook.names import BATCH_ID

pytestmark = pytest.mark.spark

# Edges the simulator rarely makes: a gap longer than 30 days, the night boundary, rounding
# ties, an account first seen on the last day.
EDGE_ROWS = [
    ("ACC_GAP", "2025-01-01T12:00:00Z", 40.0, "M1"),
    ("ACC_GAP", "2025-02-10T12:00:00Z", 10.0, "M2"),
    ("ACC_NIGHT", "2025-01-20T05:59:59Z", 5.0, "M1"),
    ("ACC_NIGHT", "2025-01-20T06:00:00Z", 7.0, "M2"),
    ("ACC_TIE", "2025-01-30T10:00:00Z", 2.125, "M1"),
    ("ACC_TIE", "2025-01-31T10:00:00Z", 1.03125, "M1"),
    ("ACC_LATE", "2025-02-14T23:59:59Z", 3.5, "M9"),
]


def edge_rows() -> pa.Table:
    frame = pd.DataFrame(EDGE_ROWS, columns=[names.ACCOUNT_ID, names.TIMESTAMP, "amount", "m"])
    frame = frame.rename(columns={"m": names.MERCHANT_ID})
    frame[names.TRANSACTION_ID] = [f"EDGE{i}" for i in range(len(frame))]
    frame[names.TIMESTAMP] = pd.to_datetime(frame[names.TIMESTAMP], utc=True)
    frame[names.CURRENCY] = "EUR"
    frame[names.TRANSACTION_TYPE] = "purchase"
    frame[names.CATEGORY] = "retail"
    frame[names.IS_FLAGGED] = False
    frame[BATCH_ID] = 0
    return pa.Table.from_pandas(frame, features.raw_arrow_schema(), preserve_index=False)


def test_reference_features_equal_spark(spark, tmp_path):
    from deltalake import write_deltalake

    raw = tmp_path / "raw"
    rows = features.generate_raw_table(raw, 2500, days=45, seed=7, quiet=True)
    write_deltalake(raw, edge_rows(), mode="append")

    features.spark_features(spark, raw, tmp_path / "spark")
    features.reference_features(raw, tmp_path / "reference", threads=1)
    result = features.compare(tmp_path / "spark", tmp_path / "reference")

    assert result["agree"], result
    assert result["rows"] > rows / 10  # a dense calendar: more account-days than accounts


def test_percentiles():
    figures = common.percentiles(list(range(1, 101)))
    assert figures["p50_ms"] == pytest.approx(50.5)
    assert figures["p99_ms"] == pytest.approx(99.01)
    assert figures["n"] == 100


def test_scale_slope_is_one_for_linear_growth_and_less_with_fixed_costs():
    from benchmarks import scale

    linear = [{"rows": 2_000_000, "wall_s": 100.0}, {"rows": 20_000_000, "wall_s": 1000.0}]
    assert scale.slope(*linear) == pytest.approx(1.0)
    fixed = [{"rows": 2_000_000, "wall_s": 60 + 40.0}, {"rows": 20_000_000, "wall_s": 60 + 400.0}]
    assert scale.slope(*fixed) == pytest.approx(0.66, abs=0.01)
