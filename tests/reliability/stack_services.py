"""Stop a service of the native stack and start it again, for the fault tests.

The services are the processes that ``stack/native/up.sh`` started, found through its pid
files (``$STACK_DIR/run/*.pid``, ``.stack`` by default). Restarting is ``up.sh`` itself,
which starts whatever is missing with the same settings. Services run by Compose (or
anything else) are not ours to stop: the tests that need this skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from workbook import services
from workbook.config import REPO_ROOT

STACK_DIR = Path(os.environ.get("STACK_DIR", REPO_ROOT / ".stack"))
NATIVE = REPO_ROOT / "stack" / "native"
PID_FILES = {"s3": "s3proxy", "kafka": "kafka", "postgres": "postgres"}


def native_pid(service: str) -> int | None:
    """The pid of the native stack's process for ``service``, if it is running."""
    pid_file = STACK_DIR / "run" / f"{PID_FILES[service]}.pid"
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        ours = str(STACK_DIR) in " ".join(process.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return process.pid if ours else None


def require_native(*names: str) -> None:
    """Skip unless each service answers and is a process of the native stack."""
    for name in names:
        try:
            services.require(name)
        except (services.ServiceUnavailableError, RuntimeError) as error:
            pytest.skip(f"the stack is not running ({error})")
        if native_pid(name) is None:
            pytest.skip(
                f"{name} is not a process of stack/native/up.sh under {STACK_DIR} (Compose?): "
                "this test stops and restarts the native stack's processes"
            )


def stop(service: str) -> None:
    """Stop ``service`` abruptly: PostgreSQL by an immediate shutdown, the others by SIGKILL."""
    pid = native_pid(service)
    assert pid is not None, f"{service} is not running"
    if service == "postgres":
        pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
        data = STACK_DIR / "data" / "postgres"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", str(data), "-m", "immediate"]
            + ["-w", "stop"],
            check=True,
            capture_output=True,
            cwd="/",
        )
    else:
        os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=30)


def start() -> None:
    """Start what is missing with ``up.sh`` (same environment, so the same ports)."""
    result = subprocess.run([str(NATIVE / "up.sh")], capture_output=True, text=True)
    assert result.returncode == 0, f"up.sh failed:\n{result.stdout}\n{result.stderr}"
