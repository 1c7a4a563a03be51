"""Feature engineering: Spark's daily account features against DuckDB on the same Parquet files.

Both engines read the same Delta table (DuckDB through its active Parquet files), compute
the features of ``workbook.features.daily_account_features`` and write the result as
Parquet; the two results are compared in full before any ratio is reported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa

from benchmarks import common
from workbook import names
from workbook.features import NEW_MERCHANT_DAYS
from workbook.ingest import RAW_SCHEMA
from workbook.names import BATCH_ID, COUNT_FEATURES, FEATURE_COLUMNS, NIGHT_END_HOUR

DAYS = 30
SEED = 42
TARGET_RATIO = 5.0  # Spark within 5x of the single-machine reference at the largest size
# Tolerances of the comparison: one unit in the last kept decimal for rounded columns (a
# different summation order may tip a rounding), float noise for the others.
TOLERANCE = {
    "daily_total_amount": 0.01,
    "amount_sum_7d": 0.01,
    "daily_average_amount": 1e-4,
    "night_share_7d": 1e-4,
    "amount_avg_30d": 1e-4,
}
ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "bigint": pa.int64(),
}


# -- data: the raw table, generated once per size -------------------------------------------


def raw_arrow_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(f.name, ARROW_TYPES[f.dataType.simpleString()], nullable=f.nullable)
            for f in RAW_SCHEMA
        ]
    )


def generate_raw_table(
    path: Path, n_transactions: int, days: int = DAYS, seed: int = SEED, quiet: bool = False
) -> int:
    """Write the simulator's transactions as the raw Delta table, one commit per day.

    Written with delta-rs, not Spark, so generation costs no JVM and stays out of any timing.
    Returns the number of rows.
    """
    from deltalake import write_deltalake

    from workbook import simulator

    config = simulator.SimulationConfig(n_transactions=n_transactions, days=days, seed=seed)
    accounts = simulator.make_accounts(config)
    schema = raw_arrow_schema()
    shutil.rmtree(path, ignore_errors=True)
    rows = 0
    for day, n in enumerate(simulator._daily_counts(config)):
        frame, _labels = simulator.split_labels(simulator.simulate_day(config, accounts, day, n))
        frame[names.TIMESTAMP] = pd.to_datetime(frame[names.TIMESTAMP], utc=True)
        frame[BATCH_ID] = 0
        write_deltalake(
            path, pa.Table.from_pandas(frame, schema, preserve_index=False), mode="append"
        )
        rows += len(frame)
        if not quiet and (day + 1) % 5 == 0:
            common.progress(f"  generated {day + 1}/{days} days, {rows:,} rows")
    return rows


def raw_table(n_transactions: int, days: int = DAYS, seed: int = SEED) -> tuple[Path, int]:
    """The raw table of this size, generated on first use and kept between runs."""
    name = f"raw_n{n_transactions}_d{days}_s{seed}"
    path, marker = common.DATA_DIR / name, common.DATA_DIR / f"{name}.json"
    if marker.exists():
        return path, json.loads(marker.read_text())["rows"]
    common.progress(f"generating {n_transactions:,} transactions over {days} days into {path}")
    with common.timed() as took:
        rows = generate_raw_table(path, n_transactions, days, seed)
    marker.write_text(json.dumps({"rows": rows, "seconds": round(took(), 1)}))
    common.progress(f"generated {rows:,} rows in {took():.0f} s")
    return path, rows


def active_files(table: Path) -> list[str]:
    """The Parquet files of the table's current version (what a Delta reader would read)."""
    from deltalake import DeltaTable

    return [uri.removeprefix("file://") for uri in DeltaTable(str(table)).file_uris()]


# -- the two engines --------------------------------------------------------------------------


def spark_features(spark, raw: Path, out: Path) -> None:
    """The workbook's own feature code, fully materialised as a Delta table."""
    from workbook import features

    shutil.rmtree(out, ignore_errors=True)
    result = features.daily_account_features(spark.read.format("delta").load(str(raw)))
    result.write.format("delta").mode("overwrite").save(str(out))


def reference_sql(files: list[str]) -> str:
    """The same definitions as ``workbook.features.daily_account_features``, in DuckDB SQL."""
    file_list = ", ".join(f"'{f}'" for f in files)
    night_end = NIGHT_END_HOUR
    new_merchant_days = NEW_MERCHANT_DAYS

    def window(days: int) -> str:
        return (
            f"(PARTITION BY account_id ORDER BY transaction_date "
            f"ROWS BETWEEN {days - 1} PRECEDING AND CURRENT ROW)"
        )

    w7, w30 = window(7), window(30)
    return f"""
    WITH tx AS (
        SELECT account_id, transaction_id, amount, merchant_id,
               CAST(timestamp AS DATE) AS transaction_date,
               hour(timestamp) < {night_end} AS is_night
        FROM read_parquet([{file_list}])
    ),
    paid AS (  -- each merchant an account paid on a day, and the day it paid it before
        SELECT account_id, transaction_date,
               lag(transaction_date) OVER (PARTITION BY account_id, merchant_id
                                           ORDER BY transaction_date) AS paid_before
        FROM (SELECT DISTINCT account_id, merchant_id, transaction_date FROM tx)
    ),
    new_merchants AS (
        SELECT account_id, transaction_date,
               count(*) FILTER (WHERE paid_before IS NULL
                                   OR transaction_date - paid_before > {new_merchant_days})
                   AS daily_new_merchants
        FROM paid GROUP BY account_id, transaction_date
    ),
    daily AS (
        SELECT account_id, transaction_date,
               count(transaction_id) AS daily_transaction_count,
               round(sum(amount), 2) AS daily_total_amount,
               round(avg(amount), 4) AS daily_average_amount,
               max(amount) AS daily_max_amount,
               count(DISTINCT merchant_id) AS daily_distinct_merchants,
               count(*) FILTER (WHERE is_night) AS daily_night_count
        FROM tx GROUP BY account_id, transaction_date
    ),
    calendar AS (  -- every day from the account's first transaction to the last day in the data
        SELECT account_id,
               CAST(unnest(generate_series(min(transaction_date),
                                           (SELECT max(transaction_date) FROM tx),
                                           INTERVAL 1 DAY)) AS DATE) AS transaction_date
        FROM daily GROUP BY account_id
    ),
    dense AS (
        SELECT c.account_id, c.transaction_date,
               coalesce(d.daily_transaction_count, 0) AS daily_transaction_count,
               coalesce(d.daily_total_amount, 0) AS daily_total_amount,
               d.daily_average_amount, d.daily_max_amount,
               coalesce(d.daily_distinct_merchants, 0) AS daily_distinct_merchants,
               coalesce(n.daily_new_merchants, 0) AS daily_new_merchants,
               coalesce(d.daily_night_count, 0) AS daily_night_count
        FROM calendar c LEFT JOIN daily d USING (account_id, transaction_date)
                        LEFT JOIN new_merchants n USING (account_id, transaction_date)
    )
    SELECT account_id, transaction_date,
           daily_transaction_count::BIGINT AS daily_transaction_count,
           daily_total_amount::DOUBLE AS daily_total_amount,
           daily_average_amount::DOUBLE AS daily_average_amount,
           daily_max_amount::DOUBLE AS daily_max_amount,
           daily_distinct_merchants::BIGINT AS daily_distinct_merchants,
           daily_new_merchants::BIGINT AS daily_new_merchants,
           daily_night_count::BIGINT AS daily_night_count,
           (sum(daily_transaction_count) OVER {w7})::BIGINT AS txn_count_7d,
           round(sum(daily_total_amount) OVER {w7}, 2)::DOUBLE AS amount_sum_7d,
           coalesce(max(daily_max_amount) OVER {w7}, 0.0)::DOUBLE AS amount_max_7d,
           round(coalesce(sum(daily_night_count) OVER {w7}
                          / nullif(sum(daily_transaction_count) OVER {w7}, 0), 0.0), 4)::DOUBLE
               AS night_share_7d,
           (sum(daily_transaction_count) OVER {w30})::BIGINT AS txn_count_30d,
           round(sum(daily_total_amount) OVER {w30}
                 / nullif(sum(daily_transaction_count) OVER {w30}, 0), 4)::DOUBLE
               AS amount_avg_30d
    FROM dense
    """


def duckdb_connection(threads: int | None = None):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # Spark's session time zone: days and hours in UTC
    if threads:
        con.execute(f"SET threads = {threads}")
    return con


def reference_features(raw: Path, out: Path, threads: int | None = None) -> None:
    """The reference: DuckDB over the raw table's active Parquet files, written as Parquet."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb_connection(threads)
    try:
        query = reference_sql(active_files(raw))
        con.execute(f"COPY ({query}) TO '{out / 'features.parquet'}' (FORMAT parquet)")
    finally:
        con.close()


def compare(spark_out: Path, reference_out: Path) -> dict:
    """Compare the two results row by row, on the keys: missing rows and differing values."""
    con = duckdb_connection()
    try:
        con.execute(
            "CREATE VIEW s AS SELECT * FROM read_parquet(["
            + ", ".join(f"'{f}'" for f in active_files(spark_out))
            + "])"
        )
        con.execute(f"CREATE VIEW r AS SELECT * FROM read_parquet('{reference_out}/*.parquet')")
        checks = ["count(*) AS joined", "count(s.account_id) AS spark_rows"]
        checks += ["count(r.account_id) AS reference_rows"]
        for column in FEATURE_COLUMNS:
            tolerance = TOLERANCE.get(column, 1e-9) + 1e-9
            if column in COUNT_FEATURES:
                differs = f"s.{column} IS DISTINCT FROM r.{column}"
            else:
                differs = (
                    f"(s.{column} IS NULL) <> (r.{column} IS NULL) "
                    f"OR abs(s.{column} - r.{column}) > {tolerance}"
                )
            checks.append(f"count(*) FILTER (WHERE {differs}) AS {column}_differs")
            checks.append(f"coalesce(max(abs(s.{column} - r.{column})), 0) AS {column}_max_diff")
        row = con.execute(
            f"SELECT {', '.join(checks)} FROM s FULL OUTER JOIN r "
            "USING (account_id, transaction_date)"
        ).fetchone()
        names_ = [d[0] for d in con.description]
    finally:
        con.close()
    result = dict(zip(names_, row, strict=True))
    differing = {c: result[f"{c}_differs"] for c in FEATURE_COLUMNS if result[f"{c}_differs"]}
    agree = not differing and result["joined"] == result["spark_rows"] == result["reference_rows"]
    return {
        "agree": agree,
        "rows": result["joined"],
        "spark_rows": result["spark_rows"],
        "reference_rows": result["reference_rows"],
        "columns_compared": list(FEATURE_COLUMNS),
        "differing_values": differing,
        "max_abs_diff": {c: float(result[f"{c}_max_diff"]) for c in FEATURE_COLUMNS},
    }


# -- the benchmark ----------------------------------------------------------------------------


def measure_size(spark, n: int, repeats: int, threads: int | None, headline: bool) -> dict:
    raw, rows = raw_table(n)
    spark_out = common.WORK_DIR / "features_out" / f"spark_{n}"
    reference_out = common.WORK_DIR / "features_out" / f"duckdb_{n}"
    spark_runs, reference_runs = [], []
    for i in range(repeats):
        common.progress(f"features at {rows:,} rows: Spark, run {i + 1}/{repeats}")
        with common.timed() as took:
            spark_features(spark, raw, spark_out)
        spark_runs.append(round(took(), 2))
        common.progress(f"features at {rows:,} rows: DuckDB, run {i + 1}/{repeats}")
        with common.timed() as took:
            reference_features(raw, reference_out, threads)
        reference_runs.append(round(took(), 2))
    agreement = compare(spark_out, reference_out)
    if not agreement["agree"]:
        raise AssertionError(f"Spark and the reference disagree at {rows:,} rows: {agreement}")
    spark_s, reference_s = min(spark_runs), min(reference_runs)
    figure = {
        "transactions": rows,
        "feature_rows": agreement["rows"],
        "raw_files": len(active_files(raw)),
        "spark_seconds": spark_s,
        "reference_seconds": reference_s,
        "spark_runs_s": spark_runs,
        "reference_runs_s": reference_runs,
        "spark_rows_per_s": round(rows / spark_s),
        "reference_rows_per_s": round(rows / reference_s),
        "ratio_spark_vs_reference": round(spark_s / reference_s, 2),
        "agreement": agreement,
    }
    common.show(f"features {rows:,} rows: Spark rows/s", figure["spark_rows_per_s"], "rows/s")
    common.show(f"features {rows:,} rows: DuckDB rows/s", figure["reference_rows_per_s"], "rows/s")
    common.show(
        f"features {rows:,} rows: Spark / DuckDB seconds",
        figure["ratio_spark_vs_reference"],
        "x",
        ("<=", TARGET_RATIO) if headline else None,
    )
    return figure


def run(spark, sizes: list[int], repeats: int = 1, threads: int | None = None) -> dict:
    """Measure each size; the headline figures are those of the largest size."""
    for n in sizes:  # all data first, so generation never overlaps a timing
        raw_table(n)
    # Warm both engines on the smallest table (JIT, class loading, extension loading).
    smallest, _ = raw_table(min(sizes))
    common.progress("warming up both engines")
    spark_features(spark, smallest, common.WORK_DIR / "features_out" / "warmup_spark")
    reference_features(smallest, common.WORK_DIR / "features_out" / "warmup_duckdb", threads)
    by_size = [
        measure_size(spark, n, repeats, threads, headline=n == max(sizes)) for n in sorted(sizes)
    ]
    largest = by_size[-1]
    conf = spark.sparkContext.getConf()
    return {
        "headline": {
            "features_rows_per_s": largest["spark_rows_per_s"],
            "features_ratio_vs_reference": largest["ratio_spark_vs_reference"],
        },
        "by_size": by_size,
        "conditions": {
            "days": DAYS,
            "seed": SEED,
            "repeats": repeats,
            "figure": "best of the repeats, after a warm-up run of both engines",
            "spark": "workbook.features.daily_account_features, written as a Delta table",
            "reference": "DuckDB SQL of the same definitions over the table's active Parquet "
            "files, written as one Parquet file",
            "duckdb_threads": threads or common.os.cpu_count(),
            "spark_settings": {
                k: conf.get(k)
                for k in (
                    "spark.master",
                    "spark.driver.memory",
                    "spark.sql.shuffle.partitions",
                    "spark.driver.extraJavaOptions",
                )
            },
        },
    }


def plot(section: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    sizes = [f"{s['transactions'] / 1e6:.1f}M" for s in section["by_size"]]
    spark = [s["spark_rows_per_s"] for s in section["by_size"]]
    reference = [s["reference_rows_per_s"] for s in section["by_size"]]
    x = range(len(sizes))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], spark, 0.4, label="Spark (local[*])")
    ax.bar([i + 0.2 for i in x], reference, 0.4, label="DuckDB reference")
    for i, s in enumerate(section["by_size"]):
        ax.annotate(
            f"{s['ratio_spark_vs_reference']:.1f}x",
            (i, max(spark[i], reference[i])),
            ha="center",
            va="bottom",
        )
    ax.set_xticks(list(x), sizes)
    ax.set(
        title="Daily account features (labels: Spark seconds / DuckDB seconds)",
        xlabel="transactions",
        ylabel="input rows per second",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
