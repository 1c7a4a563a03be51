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


def test_a_bundles_jars_replace_the_packages(tmp_path, monkeypatch):
    """With WORKBOOK_SPARK_JARS, Spark gets the listed files and nothing to resolve."""
    from workbook.config import get_settings
    from workbook.spark import jar_conf

    monkeypatch.delenv("WORKBOOK_SPARK_JARS", raising=False)
    assert set(jar_conf(get_settings())) == {"spark.jars.packages"}
    monkeypatch.setenv("WORKBOOK_SPARK_JARS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make bundle"):
        jar_conf(get_settings())
    (tmp_path / "local.txt").write_text("a.jar\nb.jar\n")
    (tmp_path / "a.jar").touch()
    with pytest.raises(FileNotFoundError, match="lacks b.jar"):
        jar_conf(get_settings())
    (tmp_path / "b.jar").touch()
    assert jar_conf(get_settings()) == {"spark.jars": f"{tmp_path}/a.jar,{tmp_path}/b.jar"}
