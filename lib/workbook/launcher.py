"""The scoring service started beside a notebook, a benchmark or a test, in its own process.

Its own process, so its request handling does not compete with the caller for the
interpreter lock. ``start_service`` waits until ``/health`` answers and returns a handle
that stops it; a caller that exits does not leave the service behind.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from workbook.config import get_settings
from workbook.services import ServiceUnavailableError
from workbook.store import StoreUnavailableError


class RunningService:
    """A service started by ``start_service``: its base URL, and ``stop()``."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (the pool closes its connections)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def post(self, path: str, payload, ok: tuple[int, ...] = (200, 202)):
        """POST ``payload`` as JSON and return the answer's JSON.

        A 503 (a store or broker behind the service is down) is raised as
        ``ServiceUnavailableError`` in the service's own words, which name it; another
        status outside ``ok`` as a ``RuntimeError`` with the answer.
        """
        request = urllib.request.Request(
            self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        try:
            with _DIRECT.open(request, timeout=60) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        if status == 503:
            raise ServiceUnavailableError(json.loads(body)["detail"])
        if status not in ok:
            raise RuntimeError(f"POST {path}: HTTP {status} {body[:500]!r}")
        return json.loads(body)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"RunningService({self.url}, pid {self.process.pid}, {state})"


# The service runs on this machine: never through a proxy from HTTP_PROXY (an office's, or
# none that answers offline).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _health(url: str) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(f"{url}/health", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:  # 503: the service runs but cannot serve
        return error.code, error.read()


def start_service(
    host: str = "127.0.0.1",
    port: int = 0,
    model_location: str | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> RunningService:
    """Start ``python -m workbook.serving`` and wait until /health answers 200.

    ``port=0`` picks a free port; ``env`` adds settings to the service's environment. The
    log goes to ``<lakehouse>/_logs/serving.log``. Raises with the service's own reason if
    it cannot serve.
    """
    port = port or free_port(host)
    log_path = get_settings().lakehouse / "_logs" / "serving.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "workbook.serving", "--host", host, "--port", str(port)]
    if model_location:
        command += ["--model", model_location]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    running = RunningService(process, f"http://{host}:{port}", log_path)
    atexit.register(running.stop)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError("the scoring service exited:\n" + "\n".join(tail))
        try:
            status, body = _health(running.url)
        except OSError:  # not listening yet
            time.sleep(0.2)
            continue
        if status == 200:
            return running
        running.stop()
        raise StoreUnavailableError(json.loads(body).get("detail", body.decode()))
    running.stop()
    raise TimeoutError(f"the scoring service did not answer within {timeout:.0f} s; see {log_path}")
