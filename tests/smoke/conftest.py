"""The workbook run at a small size, shared by the smoke tests: 01 to 05, then a short loop.

06 runs three days, with labels one day late and the drift from its first day, so that
each stage of the daily step (late labels, quality, a decision) happens within them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from workbook import local_postgres

ROWS, DAYS, SEED = 50_000, 14, 42
LOOP_DAYS, DRIFT_FROM_DAY, LABEL_DELAY = 3, 1, 1


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


@pytest.fixture(scope="session")
def workbook_run(tmp_path_factory) -> WorkbookRun:
    """The notebooks, headless, as ``make run`` runs them, on a lakehouse of their own."""
    lakehouse = tmp_path_factory.mktemp("smoke-lakehouse")
    runs = tmp_path_factory.mktemp("smoke-runs")
    done = WorkbookRun(lakehouse, {})
    command = [sys.executable, "-m", "workbook.run", "--rows", str(ROWS), "--days", str(DAYS)]
    command += ["--seed", str(SEED), "--runs-dir", str(runs), "--loop-days", str(LOOP_DAYS)]
    command += ["--drift-from-day", str(DRIFT_FROM_DAY), "--label-delay", str(LABEL_DELAY)]
    result = subprocess.run(
        command, env=done.environment(), capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((runs / "latest" / "summary.json").read_text())
    return WorkbookRun(lakehouse, summary, tuple(local_postgres.servers_under(lakehouse)))
