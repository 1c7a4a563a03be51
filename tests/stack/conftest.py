"""The stack suite: the same library against the services of `make stack-up` (or Compose)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def lakehouse_dir(tmp_path_factory):
    """Tables live in the stack's buckets; the local folder only keeps Spark's log."""
    path = tmp_path_factory.mktemp("lakehouse")
    saved = {k: os.environ.get(k) for k in ("WORKBOOK_LAKEHOUSE", "WORKBOOK_PROFILE")}
    os.environ.update(WORKBOOK_LAKEHOUSE=str(path), WORKBOOK_PROFILE="stack")
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
