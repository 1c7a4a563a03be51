"""The local profile's PostgreSQL: started on demand, found on any platform, never left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest

from workbook import local_postgres
from workbook.config import REPO_ROOT

pytestmark = pytest.mark.postgres


def answer(server: local_postgres.Server) -> str:
    with psycopg2.connect(server.uri()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT version()")
        return cursor.fetchone()[0]


def test_started_on_demand_reused_and_stopped(tmp_path):
    pgdata = tmp_path / "lakehouse" / "_postgres"
    server = local_postgres.ensure_running(pgdata)
    assert answer(server).startswith("PostgreSQL")
    assert local_postgres.ensure_running(pgdata) == server, "a running server is reused"
    assert local_postgres.servers_under(tmp_path) == [server]
    assert local_postgres.stop(pgdata) is True
    assert local_postgres.servers_under(tmp_path) == []
    assert local_postgres.stop(pgdata) is False
    again = local_postgres.ensure_running(pgdata)
    assert again.pid != server.pid and answer(again)
    assert local_postgres.stop_all_under(tmp_path) == [pgdata.resolve()]


def test_a_folder_with_spaces_in_its_path():
    """``~/My Projects/...``: the socket folder (here the data folder) goes through a shell."""
    root = Path(tempfile.mkdtemp(prefix="my projects "))
    try:
        pgdata = root / "_postgres"
        server = local_postgres.ensure_running(pgdata)
        assert server.socket_dir == pgdata.resolve() and answer(server)
        local_postgres.stop(pgdata)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_postmaster_pid_left_by_another_server_is_not_ours(tmp_path):
    """A copied or restored lakehouse carries the pid file of a server that ran elsewhere."""
    pgdata = tmp_path / "_postgres"
    local_postgres.ensure_running(pgdata)
    local_postgres.stop(pgdata)
    elsewhere = f"{os.getpid()}\n/somewhere/else\n0\n5432\n/tmp\n\n0 0\nready\n"
    (pgdata / "postmaster.pid").write_text(elsewhere)  # a live process, not a postgres of ours
    server = local_postgres.ensure_running(pgdata)
    assert server.pid != os.getpid() and answer(server)
    local_postgres.stop(pgdata)


def test_without_any_postgres_the_error_says_what_to_install(monkeypatch):
    monkeypatch.delenv(local_postgres.BIN_VARIABLE, raising=False)
    monkeypatch.setattr(local_postgres.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(local_postgres, "machine_bin_dirs", list)
    with pytest.raises(local_postgres.PostgresNotFoundError) as error:
        local_postgres.bin_dir()
    for hint in ("apt-get install postgresql", "brew install", local_postgres.BIN_VARIABLE):
        assert hint in str(error.value)


def test_a_named_folder_without_binaries_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(local_postgres.BIN_VARIABLE, str(tmp_path))
    with pytest.raises(local_postgres.PostgresNotFoundError, match="no initdb, pg_ctl"):
        local_postgres.bin_dir()


def test_data_from_another_major_version_is_named(tmp_path):
    pgdata = tmp_path / "_postgres"
    local_postgres.ensure_running(pgdata)
    local_postgres.stop(pgdata)
    (pgdata / "PG_VERSION").write_text("9\n")
    with pytest.raises(RuntimeError, match=r"made by PostgreSQL 9.*make reset"):
        local_postgres.ensure_running(pgdata)


def test_a_test_suite_leaves_no_server_behind(tmp_path):
    """A suite that uses the store (here: the store's own tests) stops its server at the end."""
    basetemp = tmp_path / "suite"
    env = {k: v for k, v in os.environ.items() if k != "WORKBOOK_LAKEHOUSE"}
    suite = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    selected = ["tests/unit/test_store.py", "-k", "materialize", f"--basetemp={basetemp}"]
    done = subprocess.run(
        suite + selected, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert list(basetemp.rglob("_postgres/PG_VERSION")), "the suite started a server"
    assert local_postgres.servers_under(basetemp) == []
