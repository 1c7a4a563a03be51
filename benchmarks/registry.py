"""What tracking costs notebook 03, and what loading the champion costs the scoring service.

03 with and without its MLflow run, side by side. Each round is a fresh Python process, as
a fresh kernel is, on a fresh copy of the benchmark lakehouse's tables, as a fresh workbook
run finds them (no tracking store yet). It starts Spark and trains as 03 does
(``reproduction.fit``: the training set, the fit, the evaluation); with tracking it first
opens the registry in the background, as 03 does, and afterwards records the run, registers
the version and chooses the champion. The two kinds of round alternate, so both see the
same machine; the overhead is the median with tracking over the median without, minus one.

Then the scoring service's start: fresh processes that read which version is the champion
and load its numpy export, as the service does at startup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from benchmarks import common
from workbook import lakehouse, names, promotion, registry, reproduction, train

TARGET_OVERHEAD = 0.10  # of 03's time
TARGET_LOAD_S = 2.0
# What a workbook run has written when 03 starts: the tables and the simulation's record.
BEFORE_03 = (names.RAW_TABLE.bucket, names.FEATURES_TABLE.bucket)
ROUND = "import sys; from benchmarks.registry import train_as_03; train_as_03(sys.argv[1])"
LOAD_PROBE = """
import time
start = time.perf_counter()
from workbook import registry
model = registry.load_scoring_model()
print(time.perf_counter() - start, model.version)
"""


def train_as_03(mode: str) -> None:
    """One round, in the process that runs it: 03's training, tracked or not."""
    from workbook.spark import get_spark

    tracked = mode == "tracked"
    if tracked:
        registry.check_available()
    spark = get_spark("03_train")
    if tracked:
        registry.open_in_background()
    config = lakehouse.load_simulation(spark)
    versions = lakehouse.table_versions(spark, train.INPUT_TABLES)
    parameters = train.run_parameters(config, 0.001, 100, 7)
    model, evaluation, _, test_df = reproduction.fit(spark, versions, config, parameters)
    if tracked:
        test_from = config.end_date - timedelta(days=6)
        metadata = train.model_metadata(config, versions, test_from, 7, evaluation)
        example = test_df.select(*names.NUMERIC_INPUTS, *names.CATEGORICAL_INPUTS).limit(5)
        run_ = registry.log_training_run(
            spark, model, parameters=parameters, metadata=metadata, input_example=example.toPandas()
        )
        version, _ = registry.register(run_)
        promotion.consider(spark, version, evaluation.model["pr_auc"], test_df)
    spark.stop()


def _round(mode: str, source: Path) -> float:
    """Seconds of one fresh process training as 03 does, on a fresh copy of the tables."""
    with tempfile.TemporaryDirectory(dir=common.WORK_DIR) as folder:
        for bucket in BEFORE_03:
            shutil.copytree(source / bucket, Path(folder) / bucket)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", ROUND, mode],
            check=True,
            cwd=common.REPO_ROOT,
            env={**os.environ, "WORKBOOK_LAKEHOUSE": folder},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def run(rounds: int = 3, loads: int = 5) -> dict:
    source = common.LAKEHOUSE_DIR
    seconds: dict[str, list[float]] = {"untracked": [], "tracked": []}
    for k in range(rounds):
        order = ("untracked", "tracked") if k % 2 == 0 else ("tracked", "untracked")
        for mode in order:
            common.progress(f"registry: round {k + 1}/{rounds}: 03 {mode}, in a fresh process")
            seconds[mode].append(_round(mode, source))
    without, with_ = (float(np.median(seconds[m])) for m in ("untracked", "tracked"))
    overhead = with_ / without - 1
    common.show("03 without tracking (median)", without, "s")
    common.show("03 with tracking and registering (median)", with_, "s")
    common.show("tracking overhead", 100 * overhead, "%", ("<=", 100 * TARGET_OVERHEAD))

    load_s = []
    for _ in range(loads):
        out = subprocess.run(
            [sys.executable, "-c", LOAD_PROBE], capture_output=True, text=True, check=True
        )
        load_s.append(float(out.stdout.split()[0]))
    common.show(
        "service: read the champion and load it (median)",
        np.median(load_s),
        "s",
        ("<=", TARGET_LOAD_S),
    )
    return {
        "headline": {
            "tracking_overhead_share": round(overhead, 3),
            "champion_load_s": round(float(np.median(load_s)), 3),
        },
        "figures": {
            "untracked_s": [round(v, 2) for v in seconds["untracked"]],
            "tracked_s": [round(v, 2) for v in seconds["tracked"]],
            "champion_load_s": [round(v, 3) for v in load_s],
        },
        "conditions": {
            "rounds": rounds,
            "round": "a fresh process on a fresh copy of the tables: Spark's start, 03's "
            "training set, fit and evaluation; tracked rounds also open the registry in the "
            "background first, then record the run (params, 3 dataset inputs, metrics, "
            "metadata.json, scoring export, the Spark pipeline with signature and input "
            "example), register it and choose the champion, on a new SQLite store",
            "champion_load": "a fresh Python process: import the registry reader, read "
            "the alias, read and parse the numpy export (no MLflow client)",
        },
    }


def plot(section: dict, path) -> None:
    import matplotlib.pyplot as plt

    figures = section["figures"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = range(1, len(figures["untracked_s"]) + 1)
    left.bar([r - 0.2 for r in rounds], figures["untracked_s"], 0.4, label="without tracking")
    left.bar([r + 0.2 for r in rounds], figures["tracked_s"], 0.4, label="with tracking")
    left.set(title="Notebook 03 in a fresh process", xlabel="round", ylabel="seconds")
    left.legend()
    right.plot(figures["champion_load_s"], "o-")
    right.axhline(TARGET_LOAD_S, color="grey", linestyle=":", label="target")
    right.set(title="Service: load the champion", xlabel="fresh process", ylabel="seconds")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
