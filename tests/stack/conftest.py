"""The stack suite: the same library against the services of `make stack-up` (or Compose)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def workbook_profile() -> str:
    return "stack"
