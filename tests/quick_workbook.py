"""The whole workbook at a small size, run once per version of the sources and kept.

The smoke suite and the reliability suite's reruns both start from notebooks 01 to 06 run
headless at this size; the run takes minutes, so the first suite that needs it keeps a
copy (its embedded PostgreSQL stopped), and each suite then works on a fresh copy of it.
The copy is restored at the path the run used: streaming checkpoints and the model
registry record absolute paths. A run is kept under a key of its command and of every
source it ran, so a change to the library or the notebooks runs the workbook again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workbook import local_postgres
from workbook.config import REPO_ROOT

ROWS, DAYS, SEED = 50_000, 14, 42
# A short loop in 06: labels one day late and the drift from its first day, so that each
# stage of the daily step (late labels, quality, a decision) happens within three days.
LOOP_DAYS, DRIFT_FROM_DAY, LABEL_DELAY = 3, 1, 1
ARGS = ["--rows", str(ROWS), "--days", str(DAYS), "--seed", str(SEED)]
ARGS += ["--loop-days", str(LOOP_DAYS), "--drift-from-day", str(DRIFT_FROM_DAY)]
ARGS += ["--label-delay", str(LABEL_DELAY)]
SOURCES = ("lib/workbook", "notebooks", "pyproject.toml")
HOME = REPO_ROOT / "runs" / "quick-workbook"


@dataclass(frozen=True)
class WorkbookRun:
    lakehouse: Path
    summary: dict
    servers_left: tuple = ()  # embedded PostgreSQL servers still running when the run ended

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "WORKBOOK_LAKEHOUSE": str(self.lakehouse),
            "WORKBOOK_PROFILE": "local",
        }

    def run(self, *only: str) -> dict:
        """The notebooks (all, or ``only`` these) again on this lakehouse; their summary."""
        runs = self.lakehouse.parent / "runs"
        command = [sys.executable, "-m", "workbook.run", *ARGS, "--runs-dir", str(runs)]
        if only:
            command += ["--only", *only]
        result = subprocess.run(
            command, env=self.environment(), capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return json.loads((runs / "latest" / "summary.json").read_text())


def _key() -> str:
    digest = hashlib.sha256(json.dumps(ARGS).encode())
    for source in SOURCES:
        root = REPO_ROOT / source
        for path in sorted(root.rglob("*") if root.is_dir() else [root]):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO_ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _copy(source: Path, target: Path) -> None:
    """A copy with owners and modes kept: PostgreSQL's folder belongs to its own user."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


@contextmanager
def fresh_copy() -> Iterator[WorkbookRun]:
    """The kept run's lakehouse, fresh, for one suite at a time (others wait for it)."""
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work, kept = HOME / "work", HOME / f"kept-{_key()}"
        local_postgres.stop_all_under(work)  # a suite cut short may have left one
        shutil.rmtree(work, ignore_errors=True)
        if not (kept / "run.json").exists():
            for old in HOME.glob("kept-*"):
                shutil.rmtree(old)
            run = WorkbookRun(work / "lakehouse", {})
            summary = run.run()
            left = [str(pgdata) for pgdata in local_postgres.stop_all_under(work)]
            _copy(work, kept / "work")
            (kept / "run.json").write_text(json.dumps({"summary": summary, "left": left}))
        else:
            _copy(kept / "work", work)
        recorded = json.loads((kept / "run.json").read_text())
        try:
            yield WorkbookRun(work / "lakehouse", recorded["summary"], tuple(recorded["left"]))
        finally:
            local_postgres.stop_all_under(work)
