"""What lineage costs the workbook, and how much it leaves beside the lakehouse.

Notebooks 01 to 06 (06 for a few days) run headless as ``make run`` runs them, with
OpenLineage's listener and the workbook's own events, and with ``OPENLINEAGE_DISABLED=true``,
each run on a fresh lakehouse of its own. The two kinds alternate, so both see the same
machine; the overhead is the median wall time with lineage over the median without, minus
one. The runs with lineage also count the events and bytes they wrote.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks import common, workbook
from workbook import local_postgres

TARGET_OVERHEAD = 0.10  # as for tracking (03) and the service's metrics and traces
# Every stage of the daily step within three days, as in the smoke suite's run.
LOOP_DAYS, DRIFT_FROM_DAY, LABEL_DELAY = 3, 1, 1
QUICK_ARGS = ("--rows", "50000", "--days", "14")


def one_run(folder: Path, with_lineage: bool, args: tuple[str, ...]) -> dict:
    lake = folder / "lakehouse"
    # The workbook's own settings, not those of the benchmark's Spark session.
    env = {k: v for k, v in os.environ.items() if k not in workbook.SESSION_VARIABLES}
    env.update(WORKBOOK_LAKEHOUSE=str(lake), WORKBOOK_PROFILE="local")
    if not with_lineage:
        env["OPENLINEAGE_DISABLED"] = "true"
    runs = folder / "runs"
    command = common.python_command(
        "-m",
        "workbook.run",
        "--runs-dir",
        str(runs),
        "--loop-days",
        str(LOOP_DAYS),
        "--drift-from-day",
        str(DRIFT_FROM_DAY),
        "--label-delay",
        str(LABEL_DELAY),
        *args,
    )
    try:
        with common.timed() as took:
            subprocess.run(
                command, env=env, cwd=common.REPO_ROOT, check=True, capture_output=True, text=True
            )
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"the workbook run failed: {error.stderr[-2000:]}") from error
    finally:
        local_postgres.stop(lake / "_postgres")
    summary = json.loads((runs / "latest" / "summary.json").read_text())
    events = list((lake / "_lineage").glob("*.jsonl"))
    return {
        "lineage": with_lineage,
        "wall_s": round(took(), 1),
        "notebook_s": summary["wall_seconds"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "events": sum(len(p.read_text().splitlines()) for p in events),
        "event_bytes": sum(p.stat().st_size for p in events),
    }


def run(rounds: int = 2, quick: bool = False) -> dict:
    args = QUICK_ARGS if quick else ()
    results = []
    for round_number in range(rounds):
        for with_lineage in (True, False):
            with tempfile.TemporaryDirectory(prefix="lineage-bench-") as folder:
                result = one_run(Path(folder), with_lineage, args)
            state = "with" if with_lineage else "without"
            common.progress(f"round {round_number + 1}, {state} lineage: {result['wall_s']} s")
            results.append(result)
    with_s = statistics.median(r["wall_s"] for r in results if r["lineage"])
    without_s = statistics.median(r["wall_s"] for r in results if not r["lineage"])
    overhead = with_s / without_s - 1
    written = [r for r in results if r["lineage"]][-1]
    common.show("01 to 06 with lineage (median)", with_s, "s")
    common.show("01 to 06 without (median)", without_s, "s")
    common.show("lineage overhead", overhead * 100, "%", ("<=", TARGET_OVERHEAD * 100))
    common.show("events written by a run", written["events"], "events")
    common.show("their size", written["event_bytes"] / 1e6, "MB")
    return {
        "headline": {
            "lineage_overhead_share": round(overhead, 4),
            "lineage_event_mb": round(written["event_bytes"] / 1e6, 2),
        },
        "loop_days": LOOP_DAYS,
        "rounds": results,
    }


def plot(section: dict, path) -> None:
    """Each notebook's median seconds, with lineage and without."""
    import matplotlib.pyplot as plt
    import numpy as np

    runs = section["rounds"]
    notebooks = [n for n in runs[0]["notebook_s"] if n != "total"]

    def median(with_lineage: bool, notebook: str) -> float:
        return statistics.median(
            r["notebook_s"][notebook] for r in runs if r["lineage"] is with_lineage
        )

    x = np.arange(len(notebooks))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.2, [median(False, n) for n in notebooks], 0.4, label="without lineage")
    ax.bar(x + 0.2, [median(True, n) for n in notebooks], 0.4, label="with lineage")
    ax.set_xticks(x, [n.split("_")[0] for n in notebooks])
    ax.set(title="The workbook with and without lineage (medians)", ylabel="seconds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
