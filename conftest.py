"""Every pytest run gets a lakehouse of its own, so tests never see (or touch) the user's."""

import atexit
import os
import shutil
import tempfile

if "WORKBOOK_LAKEHOUSE" not in os.environ:
    _lakehouse = tempfile.mkdtemp(prefix="workbook-lakehouse-")
    os.environ["WORKBOOK_LAKEHOUSE"] = _lakehouse
    atexit.register(shutil.rmtree, _lakehouse, ignore_errors=True)
