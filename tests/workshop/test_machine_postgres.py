"""On a platform without the pgserver wheel (linux aarch64), the machine's PostgreSQL serves
the local store. Here both exist: the test hides the wheel, as that platform's install does."""

from __future__ import annotations

from pathlib import Path

import psutil
import psycopg2
import pytest

from workbook import local_postgres

pytestmark = pytest.mark.postgres


def test_a_machine_postgres_serves_when_there_is_no_wheel(tmp_path, monkeypatch):
    """Platforms without the pgserver wheel (linux aarch64) use the machine's PostgreSQL."""
    found = local_postgres.machine_bin_dirs()
    if not found:
        pytest.skip("no PostgreSQL installed on this machine (make stack-up installs Debian's)")
    monkeypatch.delenv(local_postgres.BIN_VARIABLE, raising=False)
    monkeypatch.setattr(local_postgres.importlib.util, "find_spec", lambda name: None)
    pgdata = tmp_path / "_postgres"
    server = local_postgres.ensure_running(pgdata)
    assert Path(psutil.Process(server.pid).exe()).parent == found[0]
    with psycopg2.connect(server.uri()) as conn, conn.cursor() as cursor:
        cursor.execute("SHOW data_directory")
        assert cursor.fetchone()[0] == str(pgdata.resolve())
    local_postgres.stop(pgdata)
