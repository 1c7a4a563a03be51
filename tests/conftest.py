"""Shared fixtures: a throw-away lakehouse folder and one local Spark session per test run."""

from __future__ import annotations

import os

import pytest

LAKEHOUSE_VAR = "WORKBOOK_LAKEHOUSE"


@pytest.fixture(scope="session")
def workbook_profile() -> str:
    """The profile the tests run in; tests/stack overrides it."""
    return "local"


@pytest.fixture(scope="session", autouse=True)
def lakehouse_dir(tmp_path_factory, workbook_profile):
    """Point the workbook's settings at a fresh folder, before any test reads them.

    ``workbook.config.get_settings`` reads the environment on every call (nothing is read at
    import time), so setting the variable here, ahead of the first fixture or test that asks
    for settings, keeps the real ``lakehouse/`` folder (and any ``.env``) out of the tests.
    On the stack the tables live in its buckets, and the folder only keeps Spark's log.
    """
    saved = {k: os.environ.get(k) for k in (LAKEHOUSE_VAR, "WORKBOOK_PROFILE")}
    path = tmp_path_factory.mktemp("lakehouse")
    os.environ[LAKEHOUSE_VAR] = str(path)
    os.environ["WORKBOOK_PROFILE"] = workbook_profile
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def spark(lakehouse_dir):
    """A small local Spark session with Delta Lake, shared by every Spark test."""
    from workbook.spark import get_spark

    session = get_spark(
        "workbook-tests",
        **{"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"},
    )
    yield session
    session.stop()
