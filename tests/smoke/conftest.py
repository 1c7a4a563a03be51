"""The workbook run at a small size, shared by the smoke tests (and then run day by day)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROWS, DAYS, SEED = 50_000, 14, 42


@dataclass(frozen=True)
class WorkbookRun:
    lakehouse: Path
    summary: dict

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "WORKBOOK_LAKEHOUSE": str(self.lakehouse),
            "WORKBOOK_PROFILE": "local",
        }


@pytest.fixture(scope="session")
def workbook_run(tmp_path_factory) -> WorkbookRun:
    """Notebooks 01 to 05, headless, as ``make run`` runs them, on a lakehouse of their own."""
    lakehouse = tmp_path_factory.mktemp("smoke-lakehouse")
    runs = tmp_path_factory.mktemp("smoke-runs")
    done = WorkbookRun(lakehouse, {})
    command = [sys.executable, "-m", "workbook.run", "--rows", str(ROWS), "--days", str(DAYS)]
    command += ["--seed", str(SEED), "--runs-dir", str(runs)]
    result = subprocess.run(
        command, env=done.environment(), capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return WorkbookRun(lakehouse, json.loads((runs / "latest" / "summary.json").read_text()))
