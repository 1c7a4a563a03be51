"""The local profile's PostgreSQL: a server of the lakehouse's own, started on demand.

Its binaries are the ``pgserver`` wheel's where that wheel exists (linux x86_64, macOS), or
else a PostgreSQL installed on the machine (Debian's or Ubuntu's ``postgresql`` package,
Homebrew, Postgres.app), or the folder ``WORKBOOK_POSTGRES_BIN`` names. It listens on a
Unix socket only, trusts local connections and keeps its data in the lakehouse.

The first connection starts it; it then keeps running for the next notebooks and the
scoring service, until something stops it on purpose: the end of ``make run`` and of every
test suite, JupyterLab's exit under ``make lab``, ``make stop-postgres``, and ``make reset``
before it deletes the data.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from psycopg2.extensions import make_dsn

SUPERUSER = "postgres"
PORT = 5432  # only the socket's name (.s.PGSQL.5432): the server listens on no TCP port
# PostgreSQL refuses to run as root; root runs it as this user (the name pgserver gave it,
# so data folders made before keep their owner).
OS_USER_WHEN_ROOT = "pgserver"
BIN_VARIABLE = "WORKBOOK_POSTGRES_BIN"
WHEEL_BIN = "pginstall/bin"  # inside the pgserver package
MACHINE_BIN_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # Red Hat family (PGDG)
    "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew on Apple Silicon
    "/usr/local/opt/postgresql@*/bin",  # Homebrew on Intel macs
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)
# PostgreSQL's shutdown modes, by signal: SIGTERM would be "smart" (waits for every client).
SHUTDOWN_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
MAX_SOCKET_PATH = 100  # Unix socket paths are limited to 104 (macOS) or 108 bytes (Linux)


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL binaries for the local profile on this machine."""


@dataclass(frozen=True)
class Server:
    """A running server: its data folder, process and socket."""

    pgdata: Path
    pid: int
    socket_dir: Path

    def uri(self, user: str = SUPERUSER, database: str = "postgres") -> str:
        return make_dsn(host=str(self.socket_dir), port=PORT, user=user, dbname=database)


def _has_binaries(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(folder))) or (0,)


def machine_bin_dirs() -> list[Path]:
    """PostgreSQL bin folders installed on this machine: the one on PATH first, then the
    usual places, the newest version first."""
    found = []
    if pg_config := shutil.which("pg_config"):
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        found.append(Path(bindir.stdout.strip()))
    if pg_ctl := shutil.which("pg_ctl"):
        found.append(Path(pg_ctl).resolve().parent)
    for pattern in MACHINE_BIN_GLOBS:
        root = Path(pattern.split("*")[0]).parent
        if root.is_dir():
            found += sorted(root.glob(pattern[len(str(root)) + 1 :]), key=_version_key)[::-1]
    return list(dict.fromkeys(d for d in found if _has_binaries(d)))


def bin_dir() -> Path:
    """The binaries to run: WORKBOOK_POSTGRES_BIN, else pgserver's, else the machine's."""
    if named := os.environ.get(BIN_VARIABLE):
        if not _has_binaries(Path(named)):
            raise PostgresNotFoundError(
                f"{BIN_VARIABLE}={named} has no initdb, pg_ctl and postgres: point it at the "
                "bin folder of a PostgreSQL installation"
            )
        return Path(named)
    wheel = importlib.util.find_spec("pgserver")  # found, not imported: it has side effects
    if wheel and wheel.origin and _has_binaries(bundled := Path(wheel.origin).parent / WHEEL_BIN):
        return bundled
    if found := machine_bin_dirs():
        return found[0]
    system = f"{platform.system().lower()} {platform.machine()}"
    raise PostgresNotFoundError(
        f"No PostgreSQL for the local feature store: the pgserver wheel has no build for "
        f"{system}, and none is installed on this machine (looked for pg_config and pg_ctl "
        f"on PATH and in {', '.join(MACHINE_BIN_GLOBS)}). Install one (Debian or Ubuntu: "
        "`sudo apt-get install postgresql`; macOS: `brew install postgresql@16`), or set "
        f"{BIN_VARIABLE} to its bin folder, or use the stack profile (docker compose up)."
    )


def _os_user() -> str | None:
    """Who runs the server: the caller, or a user of its own when the caller is root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(OS_USER_WHEN_ROOT)
    except KeyError:
        subprocess.run(["useradd", "--system", OS_USER_WHEN_ROOT], check=True, capture_output=True)
    return OS_USER_WHEN_ROOT


def _give_to(path: Path, user: str | None) -> None:
    """Let ``user`` own ``path`` and reach it through every parent folder."""
    if user is None:
        return
    shutil.chown(path, user)
    for parent in path.parents:  # search permission only: nothing becomes readable
        parent.chmod(parent.stat().st_mode | 0o011)


def _run(bindir: Path, args: list[str], user: str | None, timeout: float = 60) -> None:
    done = subprocess.run(
        [str(bindir / args[0]), *args[1:]],
        user=user,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"PostgreSQL's {args[0]} failed: {(done.stderr or done.stdout).strip()}")


def _server(pgdata: Path, ready: bool = True) -> Server | None:
    """The server that postmaster.pid names, if that process is a postgres serving ``pgdata``
    (and, with ``ready``, accepting connections: not starting or shutting down).

    A copied or restored lakehouse may carry the file of a server that serves another folder.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, socket_dir, status = int(lines[0]), Path(lines[4]), lines[7].strip()
        command_line = psutil.Process(pid).cmdline()
        serves = Path(command_line[command_line.index("-D") + 1]).resolve()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    if serves != pgdata or (ready and status != "ready"):
        return None
    return Server(pgdata, pid, socket_dir)


def running(pgdata: Path) -> Server | None:
    """The server of ``pgdata`` if it is up and accepting connections."""
    return _server(Path(pgdata).resolve())


def _socket_dir(pgdata: Path, user: str | None) -> Path:
    if len(str(pgdata / f".s.PGSQL.{PORT}")) <= MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"workbook-postgres-{os.getuid()}-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid not in (os.getuid(), _uid(user)):
        raise RuntimeError(f"{folder} belongs to another user: remove it")
    _give_to(folder, user)
    return folder


def _uid(user: str | None) -> int:
    import pwd

    return os.getuid() if user is None else pwd.getpwnam(user).pw_uid


def _check_version(pgdata: Path, bindir: Path) -> None:
    made_by = (pgdata / "PG_VERSION").read_text().strip()
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True
    )
    major = re.search(r"\(PostgreSQL\)\s+(\d+)", version.stdout)
    if major and major.group(1) != made_by:
        raise RuntimeError(
            f"The local store's data ({pgdata}) was made by PostgreSQL {made_by}, and the "
            f"binaries in {bindir} are PostgreSQL {major.group(1)}: run `make reset` (it "
            f"deletes the local lakehouse) or set {BIN_VARIABLE} to a PostgreSQL {made_by}."
        )


@contextmanager
def _locked(pgdata: Path):
    """One process at a time starts or stops the server of a data folder."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with open(pgdata.parent / f".{pgdata.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_running(pgdata: Path) -> Server:
    """The server of ``pgdata``: created on first use, started if it is not running."""
    pgdata = Path(pgdata).resolve()
    if server := _server(pgdata):
        return server
    with _locked(pgdata):
        deadline = time.monotonic() + 60
        while _server(pgdata, ready=False) and time.monotonic() < deadline:
            if server := _server(pgdata):  # started or recovering elsewhere: wait for it
                return server
            time.sleep(0.2)
        if server := _server(pgdata, ready=False):  # its pid file must not be taken away
            raise RuntimeError(
                f"PostgreSQL (pid {server.pid}) on {pgdata} did not accept connections within "
                f"60 s; see {pgdata / 'log'}, or `make stop-postgres` and try again"
            )
        bindir, user = bin_dir(), _os_user()
        pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        _give_to(pgdata, user)  # each time: a parent folder may have been made private since
        if not (pgdata / "PG_VERSION").exists():
            _run(bindir, ["initdb", "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust",
                          "--encoding=UTF8", "--no-instructions"], user)  # fmt: skip
        _check_version(pgdata, bindir)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)  # not a server of this folder
        socket_dir = _socket_dir(pgdata, user)
        options = f"-h '' -k {shlex.quote(str(socket_dir))} -p {PORT}"  # pg_ctl runs a shell
        _run(bindir, ["pg_ctl", "-D", str(pgdata), "-o", options, "-l", str(pgdata / "log"),
                      "-w", "-t", "60", "start"], user, timeout=90)  # fmt: skip
        server = _server(pgdata)
        if server is None:
            raise RuntimeError(f"PostgreSQL did not start; see {pgdata / 'log'}")
        return server


def stop(pgdata: Path, mode: str = "fast") -> bool:
    """Stop the server of ``pgdata`` if it runs ("fast": roll back and disconnect sessions;
    "immediate": as a crash would). True if one was stopped."""
    pgdata = Path(pgdata).resolve()
    with _locked(pgdata):
        server = _server(pgdata, ready=False)
        if server is None:
            return False
        try:
            process = psutil.Process(server.pid)
            process.send_signal(SHUTDOWN_SIGNALS[mode])
            try:
                process.wait(60)
            except psutil.TimeoutExpired:  # as a crash would, then the hard way
                process.send_signal(SHUTDOWN_SIGNALS["immediate"])
                try:
                    process.wait(10)
                except psutil.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        except psutil.NoSuchProcess:
            pass  # it ended on its own meanwhile
        return True


def servers_under(root: Path) -> list[Server]:
    """Running embedded servers whose data folder is inside ``root``."""
    root = Path(root).resolve()
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        command_line = process.info["cmdline"] or []
        if process.info["name"] != "postgres" or "-D" not in command_line[:-1]:
            continue
        pgdata = Path(command_line[command_line.index("-D") + 1])
        if pgdata.is_relative_to(root) and (server := _server(pgdata.resolve(), ready=False)):
            found.append(server)
    return found


def stop_all_under(root: Path) -> list[Path]:
    """Stop every embedded server whose data folder is inside ``root``; their folders."""
    stopped = [s.pgdata for s in servers_under(root)]
    for pgdata in stopped:
        stop(pgdata)
    return stopped


def main(argv=None) -> int:
    from workbook.config import get_settings

    parser = argparse.ArgumentParser(description="The local profile's PostgreSQL.")
    parser.add_argument("action", choices=["status", "stop"])
    parser.add_argument("--pgdata", type=Path, help="its data folder (default: the lakehouse's)")
    args = parser.parse_args(argv)
    pgdata = (args.pgdata or get_settings().postgres_dir).resolve()
    server = _server(pgdata, ready=False)
    if args.action == "status":
        state = f"running (pid {server.pid})" if server else "stopped"
        print(f"PostgreSQL on {pgdata}: {state}")
    elif stop(pgdata):
        print(f"Stopped PostgreSQL on {pgdata}")
    else:
        print(f"PostgreSQL on {pgdata} was not running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
