"""What every benchmark shares: folders, percentiles, printing, the machine, the Spark session."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Generated data, the benchmark lakehouse and run folders: git-ignored, kept between runs.
WORK_DIR = BENCH_DIR / "work"
DATA_DIR = WORK_DIR / "data"
LAKEHOUSE_DIR = WORK_DIR / "lakehouse"
RUNS_DIR = WORK_DIR / "runs"


def use_benchmark_lakehouse() -> Path:
    """Point the workbook's settings (read from the environment on each call) at our lakehouse."""
    os.environ["WORKBOOK_LAKEHOUSE"] = str(LAKEHOUSE_DIR)
    os.environ["WORKBOOK_PROFILE"] = "local"
    return LAKEHOUSE_DIR


def percentiles(values_ms, points=(50, 95, 99)) -> dict[str, float]:
    values = np.asarray(values_ms, float)
    out = {f"p{p}_ms": round(float(np.percentile(values, p)), 3) for p in points}
    out.update(
        mean_ms=round(float(values.mean()), 3), max_ms=round(float(values.max()), 3), n=len(values)
    )
    return out


def show(label: str, value: float, unit: str, target: tuple[str, float] | None = None) -> None:
    """One line per measured figure, with its target when it has one."""
    text = f"  {label:<44} {value:>12,.3f} {unit}"
    if target:
        sense, limit = target
        met = value <= limit if sense == "<=" else value >= limit
        text += f"   (target {sense} {limit:g}: {'met' if met else 'NOT met'})"
    print(text, flush=True)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def timed():
    """``with timed() as t: ...`` then ``t()`` is the seconds the block took."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _java_version() -> str:
    java = shutil.which("java")
    home = os.environ.get("JAVA_HOME")
    if home:
        java = str(Path(home) / "bin" / "java")
    if not java:
        return "not found"
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "([^"]+)"', out)
    return match.group(1) if match else out.strip().splitlines()[0]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """Where the figures were measured, and how busy the machine was when they were."""
    import psutil

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "versions": {
            p: _version(p)
            for p in ("pyspark", "delta-spark", "duckdb", "deltalake", "psycopg2-binary", "fastapi")
        },
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def spark_session(driver_memory: str, jvm_options: str | None, shuffle_partitions: int):
    """The benchmark's one Spark session (one JVM per process: its memory is fixed at start)."""
    os.environ["WORKBOOK_DRIVER_MEMORY"] = driver_memory
    if jvm_options is not None:
        os.environ["WORKBOOK_JVM_OPTIONS"] = jvm_options
    os.environ["WORKBOOK_SHUFFLE_PARTITIONS"] = str(shuffle_partitions)
    from workbook.spark import get_spark

    return get_spark("benchmarks")


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
