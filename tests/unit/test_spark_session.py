"""The workbook's Spark session: what it leaves where, and what it changes in Python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark


def test_the_warehouse_folder_is_in_the_lakehouse(spark, lakehouse_dir):
    """Not spark-warehouse/ in the working directory, beside a learner's notebooks."""
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
    assert warehouse.is_relative_to(lakehouse_dir)


def test_package_jars_are_off_pythons_path(spark):
    """Spark adds its packages' jars to sys.path; each metadata lookup would read them all."""
    assert not [p for p in sys.path if p.endswith(".jar")]
