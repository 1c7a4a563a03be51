"""What tracking costs: notebook 03's training with and without its MLflow run, side by side.

On the benchmark's lakehouse (the workbook at the default size), each round trains as 03
does (``reproduction.fit``: the training set, the fit, the evaluation), then records the
run and registers it as 03 does (``registry.log_training_run`` and ``registry.register``).
Rounds alternate in one process, so both halves see the same machine; the overhead is the
tracking time over the training time. Then the scoring service's start: a fresh process
that imports the registry client and loads the champion's numpy export, as the service
does at startup.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import numpy as np

from benchmarks import common
from workbook import lakehouse, names, registry, reproduction, train

TARGET_OVERHEAD = 0.10  # of 03's time
TARGET_LOAD_S = 2.0
LOAD_PROBE = """
import time
start = time.perf_counter()
from workbook import registry
model = registry.load_scoring_model()
print(time.perf_counter() - start, model.version)
"""


def run(spark, rounds: int = 3, loads: int = 5) -> dict:
    config = lakehouse.load_simulation(spark)
    versions = lakehouse.table_versions(spark, train.INPUT_TABLES)
    parameters = train.run_parameters(config, 0.001, 100, 7)
    test_from = config.end_date - timedelta(days=6)
    fit_s, track_s = [], []
    for k in range(rounds):
        common.progress(f"registry: round {k + 1}/{rounds}: train as 03 does, then track it")
        start = time.perf_counter()
        model, evaluation, _, test_df = reproduction.fit(spark, versions, config, parameters)
        fit_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        metadata = train.model_metadata(config, versions, test_from, 7, evaluation)
        example = test_df.select(*names.NUMERIC_INPUTS, *names.CATEGORICAL_INPUTS).limit(5)
        run_ = registry.log_training_run(
            spark, model, parameters=parameters, metadata=metadata, input_example=example.toPandas()
        )
        registry.register(run_)
        track_s.append(time.perf_counter() - start)
    overhead = float(np.median(track_s) / np.median(fit_s))
    common.show("03 training (median)", np.median(fit_s), "s")
    common.show("03 tracking and registering (median)", np.median(track_s), "s")
    common.show("tracking overhead", 100 * overhead, "%", ("<=", 100 * TARGET_OVERHEAD))

    load_s = []
    for _ in range(loads):
        out = subprocess.run(
            [sys.executable, "-c", LOAD_PROBE], capture_output=True, text=True, check=True
        )
        load_s.append(float(out.stdout.split()[0]))
    common.show(
        "service: import and load the champion (median)",
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
            "fit_s": [round(v, 2) for v in fit_s],
            "track_s": [round(v, 2) for v in track_s],
            "champion_load_s": [round(v, 3) for v in load_s],
        },
        "conditions": {
            "rounds": rounds,
            "what_is_tracked": "params, 3 dataset inputs, metrics, metadata.json, scoring "
            "export, the Spark pipeline with signature and input example; then register",
            "champion_load": "a fresh Python process: import the registry client (MLflow), "
            "resolve the alias, download and parse the numpy export",
        },
    }


def plot(section: dict, path) -> None:
    import matplotlib.pyplot as plt

    figures = section["figures"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = range(1, len(figures["fit_s"]) + 1)
    left.bar([r - 0.2 for r in rounds], figures["fit_s"], 0.4, label="training (as 03)")
    left.bar([r + 0.2 for r in rounds], figures["track_s"], 0.4, label="tracking + register")
    left.set(title="Notebook 03: training and tracking", xlabel="round", ylabel="seconds")
    left.legend()
    right.plot(figures["champion_load_s"], "o-")
    right.axhline(TARGET_LOAD_S, color="grey", linestyle=":", label="target")
    right.set(title="Service: load the champion", xlabel="fresh process", ylabel="seconds")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
