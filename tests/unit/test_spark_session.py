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


def test_local_files_are_renamed_without_forking_a_process(spark, tmp_path):
    """Streaming checkpoints and Delta commits on a local disk rename through FileSystem:
    FileContext's rename forks `readlink` for each file (three to four per micro-batch)."""
    jvm = spark._jvm
    managers = jvm.org.apache.spark.sql.execution.streaming.checkpointing.CheckpointFileManager
    hadoop_conf = spark._jsparkSession.sessionState().newHadoopConf()
    manager = managers.create(jvm.org.apache.hadoop.fs.Path(str(tmp_path)), hadoop_conf)
    assert manager.getClass().getSimpleName() == "FileSystemBasedCheckpointFileManager"
    assert spark.conf.get("spark.delta.logStore.file.impl") == "io.delta.storage.LocalLogStore"
    spark.range(3).write.format("delta").save(str(tmp_path / "table"))
    spark.range(2).write.format("delta").mode("append").save(str(tmp_path / "table"))
    assert spark.read.format("delta").load(str(tmp_path / "table")).count() == 5


def test_interpreted_queries_for_a_block_then_as_before(spark):
    """A daily step runs without generated code; the session is as it was afterwards, also
    when the block fails, and the results are the same."""
    from pyspark.sql import functions as F

    from workbook.spark import INTERPRETED, interpreted

    spark.conf.set("spark.sql.codegen.wholeStage", "true")
    spark.conf.unset("spark.sql.codegen.factoryMode")

    def query():
        return spark.range(1000).select((F.col("id") % 7).alias("k")).groupBy("k").count()

    def run() -> tuple[list, bool]:
        """The query's rows, and whether its executed plan has compiled stages ("*(n)")."""
        frame = query()
        rows = sorted(frame.collect())
        return rows, "*(" in frame._jdf.queryExecution().executedPlan().toString()

    counts, compiled = run()
    assert compiled
    with interpreted(spark):
        assert {k: spark.conf.get(k) for k in INTERPRETED} == INTERPRETED
        assert run() == (counts, False)
    assert spark.conf.get("spark.sql.codegen.wholeStage") == "true"
    assert spark.conf.get("spark.sql.codegen.factoryMode", None) is None
    with pytest.raises(RuntimeError, match="a step failed"), interpreted(spark):
        raise RuntimeError("a step failed")
    assert spark.conf.get("spark.sql.codegen.wholeStage") == "true"


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


def test_the_driver_maps_the_class_archive_when_there_is_one(tmp_path, monkeypatch):
    """Only a JVM that does not write an archive itself maps the one written before."""
    from workbook import class_archive
    from workbook.config import get_settings
    from workbook.spark import spark_conf

    def driver_options() -> str:
        return spark_conf(get_settings(), "test")["spark.driver.extraJavaOptions"]

    monkeypatch.setattr(class_archive, "PATH", tmp_path / "classes.jsa")
    assert "SharedArchiveFile" not in driver_options()
    class_archive.PATH.touch()
    assert f"-XX:SharedArchiveFile={class_archive.PATH}" in driver_options()
    monkeypatch.setenv("WORKBOOK_JVM_OPTIONS", "-XX:ArchiveClassesAtExit=/tmp/new.jsa")
    assert "SharedArchiveFile" not in driver_options()


def test_the_setups_class_archive_is_mapped_by_a_new_session(tmp_path):
    """`make setup` wrote an archive that this Java maps with these jars; a file cut short
    is refused (mapped, it would crash the JVM), so it never replaces a good one."""
    from workbook import class_archive

    assert class_archive.PATH.is_file(), "no class archive: run make setup"
    assert class_archive.maps(class_archive.PATH)
    cut_short = tmp_path / "cut-short.jsa"
    with open(class_archive.PATH, "rb") as archive:
        cut_short.write_bytes(archive.read(1 << 20))
    assert not class_archive.maps(cut_short)
