"""The whole workbook, headless, into a fresh lakehouse: wall seconds and peak resident memory.

The same lakehouse (model, features, online store) then serves the stream and lookup
benchmarks. Each executed notebook keeps papermill's per-cell durations, so the section also
says where the seconds go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from benchmarks import common
from workbook import local_postgres

TARGET_WALL_S = 360.0  # 01 to 06, 06 running its 14 days
TARGET_PEAK_MB = 4096
TARGET_STEP_S = 15.0  # one daily step of 06
QUICK_ARGS = (
    *("--rows", "50000", "--days", "14"),
    *("--loop-days", "3", "--drift-from-day", "1", "--label-delay", "1"),
)
READY_MARKER = common.LAKEHOUSE_DIR / "_benchmark_ready.json"
# Settings the benchmark's own Spark session changes; the workbook runs with its defaults.
SESSION_VARIABLES = (
    "WORKBOOK_DRIVER_MEMORY",
    "WORKBOOK_JVM_OPTIONS",
    "WORKBOOK_SHUFFLE_PARTITIONS",
)


def stop_postgres(lake: Path) -> None:
    """Stop the PostgreSQL of the benchmark lakehouse before the lakehouse is replaced."""
    if local_postgres.stop(lake / "_postgres"):
        common.progress("stopped PostgreSQL of the benchmark lakehouse")


def run_workbook(args: tuple[str, ...] = ()) -> tuple[float, Path]:
    """Run the workbook into a fresh benchmark lakehouse; its wall seconds and run folder."""
    lake = common.LAKEHOUSE_DIR
    stop_postgres(lake)
    shutil.rmtree(lake, ignore_errors=True)
    lake.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in SESSION_VARIABLES}
    env.update(WORKBOOK_LAKEHOUSE=str(lake), WORKBOOK_PROFILE="local")
    command = common.python_command("-m", "workbook.run", "--runs-dir", str(common.RUNS_DIR), *args)
    common.progress("workbook: " + " ".join(command[1:]))
    errors = lake / "_logs" / "workbook_run.stderr"
    errors.parent.mkdir(parents=True, exist_ok=True)
    with common.timed() as took, open(errors, "w") as stderr:
        process = subprocess.Popen(
            command, env=env, cwd=common.REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        for line in process.stdout:  # the runner's progress lines; its summary is read from file
            if line.startswith("["):
                print("  " + line.rstrip(), flush=True)
        process.wait()
    if process.returncode:
        print("\n".join(errors.read_text().splitlines()[-15:]), flush=True)
        raise RuntimeError(f"the workbook run failed (exit {process.returncode})")
    run_dir = (common.RUNS_DIR / "latest").resolve()
    READY_MARKER.write_text(json.dumps({"args": list(args), "run": str(run_dir)}))
    return took(), run_dir


def ensure_lakehouse() -> None:
    """A lakehouse with a trained model and a filled online store, made small if there is none."""
    common.use_benchmark_lakehouse()
    if not READY_MARKER.exists():
        common.progress("no benchmark lakehouse yet: running the workbook at a small size")
        run_workbook(QUICK_ARGS)


def notebook_profile(run_dir: Path, wall: dict[str, float]) -> dict:
    """Per notebook: its cells' seconds, the Spark start-up cell, and the slowest cells."""
    import nbformat

    profile = {}
    for name, seconds in wall.items():
        if name == "total":
            continue
        nb = nbformat.read(run_dir / f"{name}.ipynb", as_version=4)
        cells = [
            (c.metadata.get("papermill", {}).get("duration") or 0.0, c.source)
            for c in nb.cells
            if c.cell_type == "code"
        ]
        spark_start = next((d for d, src in cells if "get_spark(" in src), 0.0)
        slowest = sorted(cells, key=lambda c: c[0], reverse=True)[:3]
        cell_total = sum(d for d, _ in cells)
        profile[name] = {
            "wall_s": seconds,
            "cells_s": round(cell_total, 1),
            "kernel_and_runner_s": round(seconds - cell_total, 1),
            "spark_start_cell_s": round(spark_start, 1),
            "slowest_cells": [
                {"s": round(d, 1), "first_line": src.strip().splitlines()[0][:80]}
                for d, src in slowest
            ],
        }
    return profile


def run(quick: bool = False) -> dict:
    args = QUICK_ARGS if quick else ()
    wall_s, run_dir = run_workbook(args)
    summary = json.loads((run_dir / "summary.json").read_text())
    notebooks = summary["wall_seconds"]
    steps = (summary.get("monitoring") or {}).get("step_seconds") or []
    stages = (summary.get("monitoring") or {}).get("stage_seconds") or []
    section = {
        "headline": {
            "workbook_wall_s": round(wall_s, 1),
            "workbook_peak_rss_mb": summary["peak_rss_mb"],
            "loop_step_median_s": round(float(np.median(steps)), 1) if steps else None,
            "loop_step_last_vs_first": round(steps[-1] / steps[0], 2) if steps else None,
        },
        "loop_step_seconds": steps,
        "loop_stage_median_s": {
            stage: round(float(np.median([day[stage] for day in stages if stage in day])), 1)
            for stage in dict.fromkeys(stage for day in stages for stage in day)
        },
        "notebook_seconds": notebooks,
        "profile": notebook_profile(run_dir, notebooks),
        "rows": summary["rows"],
        "model": summary["model"],
        "conditions": {
            "command": "python -m workbook.run " + " ".join(args),
            "size": "default (200,000 transactions, 30 days; 14 loop days)"
            if not quick
            else " ".join(args),
            "lakehouse": "fresh (deleted before the run)",
            "wall": "the whole command, interpreter start to exit",
            "peak_rss": "runs/latest/summary.json: the runner, kernels, JVMs and PostgreSQL",
            "run_dir": str(run_dir.relative_to(common.REPO_ROOT)),
        },
    }
    for name, seconds in notebooks.items():
        if name != "total":
            spark_s = section["profile"][name]["spark_start_cell_s"]
            common.show(f"workbook {name} (Spark start {spark_s:.1f} s)", seconds, "s")
    common.show("workbook wall", wall_s, "s", ("<=", TARGET_WALL_S))
    common.show("workbook peak RSS", summary["peak_rss_mb"], "MB", ("<=", TARGET_PEAK_MB))
    if steps:
        common.show("06: one daily step (median)", np.median(steps), "s", ("<=", TARGET_STEP_S))
        common.show("06: last day's step / first day's", steps[-1] / steps[0], "x", ("<=", 1.5))
        for stage, seconds in section["loop_stage_median_s"].items():
            common.show(f"06: {stage} (median of the days)", seconds, "s")
    return section


def plot(section: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    profile = section["profile"]
    names_ = list(profile)
    spark = [profile[n]["spark_start_cell_s"] for n in names_]
    other_cells = [profile[n]["cells_s"] - profile[n]["spark_start_cell_s"] for n in names_]
    kernel = [max(0.0, profile[n]["kernel_and_runner_s"]) for n in names_]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names_, kernel, label="kernel start and runner", color="tab:gray")
    ax.bar(names_, spark, bottom=kernel, label="Spark session start", color="tab:orange")
    bottoms = [k + s for k, s in zip(kernel, spark, strict=True)]
    ax.bar(names_, other_cells, bottom=bottoms, label="the notebook's work", color="tab:blue")
    ax.set(
        title=f"Workbook: {section['headline']['workbook_wall_s']:.0f} s wall, "
        f"peak {section['headline']['workbook_peak_rss_mb']:,} MB",
        ylabel="seconds",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
