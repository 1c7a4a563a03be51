"""Run the whole workbook headless: notebooks 01 to 06 in order, with papermill.

    python -m workbook.run [--rows N] [--days D] [--seed S] [--start-date YYYY-MM-DD]
                           [--loop-days N] [--drift-from-day K] [--label-delay L]

Executed notebooks and their HTML exports go to ``runs/<time>/``; ``runs/latest`` points at
the newest run and holds ``summary.json``.

The notebooks share one kernel, so the JVM and its jars are started once (about 10 s per
notebook saved); each notebook still stops its Spark session and builds its own state, and
the kernel's variables are dropped between notebooks.
``--kernel-per-notebook`` runs each in a fresh kernel, as nbval and JupyterLab do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from workbook import local_postgres
from workbook.config import REPO_ROOT, get_settings
from workbook.report import REPORT_ENV

NOTEBOOKS = (
    "01_ingest",
    "02_features",
    "03_train",
    "04_stream_inference",
    "05_feature_store",
    "06_monitor_retrain",
)
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class PeakMemory:
    """Samples the resident memory of this process and all its children (kernels, JVMs).

    Pages that processes share count once (their proportional set size, where the system
    gives it): a process the JVM forks to run a command holds all of the JVM's pages until
    it runs the command, and their resident sizes added up would count the JVM twice.
    """

    def __init__(self, interval: float = 0.5):
        import psutil

        self._root = psutil.Process()
        self._interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process may end while we look
                    total += _resident(proc)
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _resident(proc) -> int:
    """``proc``'s proportional set size on Linux, its resident set size elsewhere."""
    if sys.platform.startswith("linux"):
        return proc.memory_full_info().pss
    return proc.memory_info().rss


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Run the workbook's notebooks headless.")
    parser.add_argument("--rows", type=int, help="legitimate transactions to simulate")
    parser.add_argument("--days", type=int, help="days in the simulated period")
    parser.add_argument("--seed", type=int, help="simulator seed")
    parser.add_argument("--start-date", help="first simulated day, YYYY-MM-DD")
    parser.add_argument("--loop-days", type=int, help="days 06 runs the platform for")
    parser.add_argument("--drift-from-day", type=int, help="06's day the drift starts (0: none)")
    parser.add_argument("--label-delay", type=int, help="days until a day's labels arrive (06)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    parser.add_argument("--only", nargs="*", choices=NOTEBOOKS, help="run only these notebooks")
    parser.add_argument(
        "--until",
        type=notebook_named,
        help="run the notebooks before this one (03 or 03_train), so a learner can open it",
    )
    parser.add_argument(
        "--kernel-per-notebook", action="store_true", help="a fresh kernel for each notebook"
    )
    return parser.parse_args(argv)


def notebook_named(text: str) -> str:
    """The notebook that ``text`` names: its full name or its number."""
    found = [n for n in NOTEBOOKS if n == text or n.split("_")[0] == text.zfill(2)]
    if not found:
        raise argparse.ArgumentTypeError(f"no notebook {text!r}; one of {', '.join(NOTEBOOKS)}")
    return found[0]


def notebook_parameters(path: Path, overrides: dict) -> dict:
    """The overrides that this notebook declares in its parameters cell."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    return {k: v for k, v in overrides.items() if k in declared and v is not None}


def export_html(notebook: Path, target: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    target.write_text(body)


def kernel_manager(sockets: Path):
    """A kernel manager that talks to its kernel over local sockets (``sockets-1``, ...), not TCP.

    Nothing listens on a port, and the kernel has no reason to warn that its traffic is
    unencrypted.
    """
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(sockets))


def forget_variables(manager) -> None:
    """Empty a shared kernel's namespace, as a fresh kernel's would be: the previous notebook's
    frames (03's scores, for one) are freed instead of held to the end of the run."""
    from jupyter_core.utils import run_sync

    client = manager.client()
    client.start_channels()
    try:
        reply = run_sync(client.execute_interactive)(
            "%reset -f\nimport gc\n_ = gc.collect()", store_history=False, timeout=120
        )
    finally:
        client.stop_channels()
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"the shared kernel could not be emptied: {reply['content']}")


@contextlib.contextmanager
def kernels(shared: bool):
    """Per notebook, the kernel manager to run it with: the same one when ``shared``."""
    from jupyter_core.utils import run_sync

    with tempfile.TemporaryDirectory(prefix="workbook-kernel-") as folder:
        current = []

        def stop():
            if current and current[-1].has_kernel:
                run_sync(current[-1].shutdown_kernel)()

        def for_notebook():
            if shared and current:
                forget_variables(current[-1])
            else:
                stop()  # the previous notebook's, when each gets its own
                current.append(kernel_manager(Path(folder) / f"kernel{len(current)}"))
            return current[-1]

        try:
            yield for_notebook
        finally:
            stop()


def summarize(report: dict, wall: dict, peak_mb: float, parameters: dict) -> dict:
    return {
        "rows": {
            "raw": report.get("raw_rows"),
            "quarantine": report.get("quarantine_rows"),
            "labels": report.get("label_rows"),
            "features": report.get("feature_rows"),
            "predictions": report.get("prediction_rows"),
            "online_store": report.get("online_rows"),
        },
        "model": {
            k: report.get(k)
            for k in ("roc_auc", "pr_auc", "registered_version", "alias", "tracking_uri")
        },
        "lookup_latency": {k: report.get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
        "monitoring": report.get("monitoring"),
        "wall_seconds": {**wall, "total": round(sum(wall.values()), 1)},
        "peak_rss_mb": round(peak_mb),
        "parameters": parameters,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def local_postgres_stopped_at_the_end():
    """The local PostgreSQL this run starts (05, or a daily step of 06) ends with the run,
    and starts again with the next notebook that needs it. One already running (JupyterLab's)
    is left as it is."""
    settings = get_settings()
    ours = settings.profile == "local" and not local_postgres.running(settings.postgres_dir)
    try:
        yield
    finally:
        if ours and local_postgres.stop(settings.postgres_dir):
            print(f"Stopped the local PostgreSQL ({settings.postgres_dir})")


def main(argv=None) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    args = parse_args(argv)
    overrides = {
        "n_transactions": args.rows,
        "days": args.days,
        "seed": args.seed,
        "start_date": args.start_date,
        "loop_days": args.loop_days,
        "drift_from_day": args.drift_from_day,
        "label_delay_days": args.label_delay,
    }
    run_dir = args.runs_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (run_dir / "html").mkdir(parents=True)
    os.environ[REPORT_ENV] = str(run_dir / "report.json")
    wall: dict[str, float] = {}
    selected = args.only or NOTEBOOKS
    if args.until:
        selected = [n for n in selected if n < args.until]
        print(f"Catching up to {args.until}: {', '.join(selected) or 'nothing to run'}")
    print(f"Running {len(selected)} notebooks; outputs in {run_dir}", flush=True)
    with (
        local_postgres_stopped_at_the_end(),
        PeakMemory() as memory,
        kernels(shared=not args.kernel_per_notebook) as kernel_for,
    ):
        for i, name in enumerate(selected, 1):
            source = NOTEBOOK_DIR / f"{name}.ipynb"
            executed = run_dir / f"{name}.ipynb"
            params = notebook_parameters(source, overrides)
            print(f"[{i}/{len(selected)}] {name} {params or ''}".rstrip(), end=" ... ", flush=True)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(source),
                    str(executed),
                    parameters=params,
                    cwd=str(NOTEBOOK_DIR),
                    progress_bar=False,
                    kernel_name="python3",
                    km=kernel_for(),
                )
            except PapermillExecutionError as error:
                print("failed")
                print(
                    f"\n{name} failed in cell {error.cell_index} (execution count "
                    f"{error.exec_count}): {error.ename}: {error.evalue}\n"
                    f"The executed notebook, with the full traceback: {executed}",
                    file=sys.stderr,
                )
                return 1
            wall[name] = round(time.perf_counter() - start, 1)
            print(f"done in {wall[name]} s", flush=True)
            export_html(executed, run_dir / "html" / f"{name}.html")
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    summary = summarize(report, wall, memory.peak_mb, given)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    latest = args.runs_dir / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
