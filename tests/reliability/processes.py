"""Real processes for the fault tests: start a worker, watch its progress, kill it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

WORKER = Path(__file__).with_name("worker.py")


def wait_until(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def list_names(folder: str, recursive: bool = False) -> list[str]:
    """File names under a local folder or an ``s3a://bucket/prefix`` folder, relative to it."""
    if not folder.startswith("s3a://"):
        path = Path(folder)
        if not path.is_dir():
            return []
        found = path.rglob("*") if recursive else path.iterdir()
        return sorted(str(p.relative_to(path)) for p in found)
    from workbook import services

    parts = urlsplit(folder)
    prefix = parts.path.lstrip("/").rstrip("/") + "/"
    objects = services.s3_client().list_objects(parts.netloc, prefix=prefix, recursive=recursive)
    return sorted(o.object_name[len(prefix) :].rstrip("/") for o in objects)


def data_files(table: str) -> int:
    """Parquet files a Delta table's writers have created, committed or not."""
    return sum(name.endswith(".parquet") for name in list_names(table, recursive=True))


def batches(checkpoint: str, stage: str = "commits") -> int:
    """Micro-batches a streaming checkpoint has planned ("offsets") or finished ("commits")."""
    return sum(name.isdigit() for name in list_names(f"{checkpoint}/{stage}"))


class Worker:
    """``worker.py`` running one task in a child process, its output kept in ``log``."""

    def __init__(self, task: dict, log: Path, env: dict | None = None):
        self.task = task
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(task)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def jvms(self) -> list[psutil.Process]:
        """The worker's Java processes (PySpark's gateway JVM is a child of its Python)."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if "java" in c.name()]

    def kill(self, jvm_too: bool) -> None:
        """SIGKILL the Python process, and first its JVM too if asked; wait until all are gone.

        Killed alone, Python leaves its JVM behind, which exits when it sees its parent's
        pipe close; waiting for that keeps a dying writer from overlapping the restart.
        """
        jvms = wait_until(
            lambda: self.process.poll() is not None or self.jvms(), 60, "the worker's JVM"
        )
        if self.process.poll() is not None:
            raise AssertionError(
                f"the worker ended (exit code {self.process.returncode}) before it could be "
                "killed: give it more work, or kill it sooner"
            )
        if jvm_too:
            for jvm in jvms:
                jvm.kill()
        self.process.kill()
        self.process.wait(30)
        _, alive = psutil.wait_procs(jvms, timeout=60)
        for jvm in alive:  # an orphan that did not notice: not the fault under test
            jvm.kill()

    def wait(self, timeout: float = 300) -> None:
        """Wait for a normal end; a failure shows the end of the worker's log."""
        code = self.process.wait(timeout)
        if code != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
            raise AssertionError(f"worker exited with {code}:\n{tail}")


def run_worker(task: dict, log: Path, env: dict | None = None, timeout: float = 300) -> None:
    Worker(task, log, env).wait(timeout)


def kill_mid_run(
    task: dict,
    log: Path,
    checkpoint: str,
    jvm_too: bool,
    after_batches: int = 1,
    into_batch: float = 1.0,
    writing_to: str | None = None,
    env=None,
) -> int:
    """Start the task; SIGKILL it in batch ``after_batches + 1``, once that batch is planned.

    The kill comes ``into_batch`` seconds into the batch or, given ``writing_to`` (a table),
    as soon as the batch's first data file lands in it: a moment set by the work's progress,
    not by the machine's speed. Returns the number of batches committed at the kill.
    """
    worker = Worker(task, log, env)

    def ended() -> bool:
        return worker.process.poll() is not None

    try:
        wait_until(
            lambda: ended() or batches(checkpoint, "offsets") > after_batches,
            240,
            f"batch {after_batches + 1} to start",
        )
        if ended():
            raise AssertionError("the worker ended before it could be killed: too little data")
        if writing_to is None:
            time.sleep(into_batch)  # into the batch: reading, writing or committing
        else:
            files = data_files(writing_to)
            wait_until(
                lambda: ended() or data_files(writing_to) > files,
                240,
                f"batch {after_batches + 1} to write to {writing_to}",
                poll=0.02,
            )
        committed = batches(checkpoint)
        worker.kill(jvm_too)
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
    return committed


def read_tables(
    tables: dict[str, str], workdir: Path, spark=None, columns: list[str] | None = None
) -> dict[str, list[dict] | None]:
    """Each Delta table's rows as dicts (None when there is no table), all or some columns.

    Local tables are read with ``spark``; tables on S3 through a worker in the stack profile,
    so that this process keeps its local session.
    """
    if spark is not None and not any(p.startswith("s3a://") for p in tables.values()):
        from workbook import lakehouse

        return {
            name: [
                r.asDict()
                for r in spark.read.format("delta").load(path).select(*(columns or "*")).collect()
            ]
            if lakehouse.is_delta_table(spark, path)
            else None
            for name, path in tables.items()
        }
    out = workdir / f"dump-{time.monotonic_ns()}.json"
    task = {"job": "dump", "tables": tables, "columns": columns, "out": str(out)}
    run_worker(task, workdir / "dump.log")
    return json.loads(out.read_text())
