"""The workbook run at a small size, shared by the smoke tests: 01 to 05, then a short loop
(``quick_workbook``: three days of 06, labels one day late, the drift from its first day).
"""

from __future__ import annotations

import pytest
import quick_workbook


@pytest.fixture(scope="session")
def workbook_run():
    """The notebooks run headless as ``make run`` runs them; a fresh copy for this session."""
    with quick_workbook.fresh_copy() as run:
        yield run
