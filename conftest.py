"""Every pytest run gets a lakehouse of its own, so tests never see (or touch) the user's,
and no PostgreSQL a test started outlives the run."""

import atexit
import os
import shutil
import tempfile

import pytest

# Each pytest-xdist worker makes its own: it inherits the lakehouse of the process that
# started it otherwise.
if "WORKBOOK_LAKEHOUSE" not in os.environ or "PYTEST_XDIST_WORKER" in os.environ:
    _lakehouse = tempfile.mkdtemp(prefix="workbook-lakehouse-")
    os.environ["WORKBOOK_LAKEHOUSE"] = _lakehouse
    atexit.register(shutil.rmtree, _lakehouse, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind(tmp_path_factory):
    """Stop the embedded servers of every lakehouse the tests made (the first fixture set up
    is the last torn down)."""
    yield
    from workbook import local_postgres

    for root in {tmp_path_factory.getbasetemp(), os.environ["WORKBOOK_LAKEHOUSE"]}:
        local_postgres.stop_all_under(root)
