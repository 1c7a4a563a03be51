"""The workbook at growing sizes: wall time per notebook and peak memory, on a log-log curve.

Each size is one ``python -m workbook.run --rows N --loop-days 3 ...`` into a fresh
lakehouse (06 runs three days: its steps grow with a day's volume, not with the period's).
The slope of log(wall time) against log(rows) between two sizes says how time grows: 1 is
linear, under 1 is what fixed costs (JVM start, per-job and per-batch overheads) and
parallelism give.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import common, workbook

SIZES = (200_000, 2_000_000, 20_000_000)
QUICK_SIZES = (20_000, 200_000)
# 06 for three days, the drift from its first and labels a day late, as the lineage benchmark.
LOOP_ARGS = ("--loop-days", "3", "--drift-from-day", "1", "--label-delay", "1")
TARGET_PEAK_MB = 6144  # at every size
TARGET_SLOPE = 1.0  # wall time, between the two largest sizes


def slope(small: dict, large: dict, key: str = "wall_s") -> float:
    """d log(key) / d log(rows) between two points of the curve."""
    return math.log(large[key] / small[key]) / math.log(large["rows"] / small["rows"])


def run(sizes=SIZES) -> dict:
    points = []
    for rows in sorted(sizes):
        common.progress(f"scale: {rows:,} transactions")
        wall_s, run_dir = workbook.run_workbook(("--rows", str(rows), *LOOP_ARGS))
        summary = json.loads((run_dir / "summary.json").read_text())
        notebooks = {k: v for k, v in summary["wall_seconds"].items() if k != "total"}
        point = {
            "rows": rows,
            "raw_rows": summary["rows"]["raw"],
            "wall_s": round(wall_s, 1),
            "notebook_s": notebooks,
            "notebooks_01_05_s": round(sum(v for k, v in notebooks.items() if k < "06"), 1),
            "peak_rss_mb": summary["peak_rss_mb"],
        }
        points.append(point)
        common.show(f"scale {rows:>11,}: wall", wall_s, "s")
        limit = ("<=", TARGET_PEAK_MB)
        common.show(f"scale {rows:>11,}: peak RSS", point["peak_rss_mb"], "MB", limit)
    # The benchmark lakehouse now holds the largest size: the lookup and stream benchmarks
    # make their own default-size one again.
    workbook.READY_MARKER.unlink(missing_ok=True)
    slopes = [
        {"from": a["rows"], "to": b["rows"], "wall": round(slope(a, b), 2)}
        for a, b in zip(points, points[1:], strict=False)
    ]
    for s in slopes:
        label = f"scale slope {s['from']:,} -> {s['to']:,}"
        common.show(label, s["wall"], "", ("<=", TARGET_SLOPE))
    return {
        "headline": {
            "scale_slope_largest": slopes[-1]["wall"] if slopes else None,
            "scale_peak_rss_mb": max(p["peak_rss_mb"] for p in points),
            "scale_largest_rows": points[-1]["rows"],
        },
        "points": points,
        "slopes": slopes,
        "conditions": {
            "command": f"python -m workbook.run --rows N {' '.join(LOOP_ARGS)}, one per size",
            "lakehouse": "fresh for each size",
            "wall": "the whole command, interpreter start to exit",
            "peak_rss": "runs/latest/summary.json: the runner, kernel, JVM, PostgreSQL, service",
        },
    }


def plot(section: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    points = section["points"]
    rows = [p["rows"] for p in points]
    fig, (times, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in points[-1]["notebook_s"]:
        times.plot(rows, [p["notebook_s"].get(name) for p in points], "o-", label=name)
    times.plot(rows, [p["wall_s"] for p in points], "ks-", lw=2, label="whole run")
    linear = [points[0]["wall_s"] * r / rows[0] for r in rows]
    times.plot(rows, linear, "k:", label="linear from the smallest")
    slopes = ", ".join(f"{s['wall']:.2f}" for s in section["slopes"])
    times.set(
        xscale="log",
        yscale="log",
        xlabel="transactions",
        ylabel="seconds",
        title=f"Wall time (log-log slopes {slopes})",
    )
    times.legend(fontsize=7)
    memory.plot(rows, [p["peak_rss_mb"] for p in points], "o-", color="tab:purple")
    memory.axhline(TARGET_PEAK_MB, color="tab:red", ls="--", label="target 6 GB")
    memory.set(xscale="log", xlabel="transactions", ylabel="MB", title="Peak resident memory")
    memory.set_ylim(bottom=0)
    memory.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
