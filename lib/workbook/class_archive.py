"""The classes Spark's driver loads at every start, kept in a class-data-sharing archive.

A Spark session loads some twenty thousand classes (Spark, Delta, MLlib) before its first
result. The JVM can instead map them from an archive written once (Java's AppCDS): every
later session, notebook kernel and test worker then starts faster. ``make setup`` writes the
archive into the environment (``python -m workbook.class_archive``). A JVM checks that the
archive matches its own version and class path, and starts as before when it does not; a
file cut short would crash it, so a new archive takes the old one's place only once a
session has started with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from workbook.config import get_settings

PATH = Path(
    os.environ.get(
        "WORKBOOK_CLASS_ARCHIVE", Path(sys.prefix) / "share" / "workbook" / "spark-classes.jsa"
    )
)


def java_option(flags: str) -> str:
    """The option that maps the archive into a JVM started with ``flags``, or nothing: when
    there is no archive, or when that JVM writes one."""
    if not PATH.is_file() or "-XX:ArchiveClassesAtExit" in flags:
        return ""
    return f"-XX:SharedArchiveFile={PATH}"


def workload(lakehouse: Path) -> None:
    """What most notebooks do, in small: Delta writes, MERGE, reads, a window, pandas through
    Arrow, a streaming micro-batch and a model fitted, so their classes are loaded."""
    from delta.tables import DeltaTable
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from workbook.spark import get_spark

    spark = get_spark("class-archive")
    path = str(lakehouse / "table")
    rows = spark.range(1000).withColumn("day", (F.col("id") % 7).cast("int"))
    rows.write.format("delta").mode("overwrite").save(path)
    merge = DeltaTable.forPath(spark, path).alias("t").merge(rows.alias("s"), "t.id = s.id")
    merge.whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    table = spark.read.format("delta").load(path)
    table.groupBy("day").agg(F.count("*"), F.avg("id")).toPandas()
    first = Window.partitionBy("day").orderBy("id")
    table.withColumn("rank", F.row_number().over(first)).filter("rank = 1").collect()
    stream = spark.readStream.format("delta").load(path).writeStream
    stream.foreachBatch(lambda batch, _: batch.count()).trigger(availableNow=True).option(
        "checkpointLocation", str(lakehouse / "checkpoint")
    ).start().awaitTermination()
    labelled = VectorAssembler(inputCols=["id"], outputCol="features").transform(
        table.withColumn("label", (F.col("day") == 0).cast("double"))
    )
    LogisticRegression(maxIter=3).fit(labelled).transform(labelled).count()
    spark.stop()


def _run(step: str, jvm_options: str, **env: str) -> bool:
    """``step`` of this module in a new Python and JVM on a lakehouse of its own; True if it
    succeeded. Waits for its JVM too, which outlives its Python while it writes an archive."""
    with tempfile.TemporaryDirectory(prefix="workbook-classes-") as folder:
        env |= {
            "WORKBOOK_PROFILE": "local",
            "WORKBOOK_LAKEHOUSE": folder,
            "WORKBOOK_JVM_OPTIONS": f"{get_settings().jvm_options} {jvm_options}",
        }
        command = [sys.executable, "-m", "workbook.class_archive", step, folder]
        # A JVM's crash report, if any, lands in the folder too.
        done = subprocess.run(command, env={**os.environ, **env}, cwd=folder)
        jvms = [  # the session's settings, the folder among them, are on its command line
            p
            for p in psutil.process_iter(["cmdline"])
            if any(folder in arg for arg in p.info["cmdline"] or [])
        ]
        psutil.wait_procs(jvms, timeout=300)
    return done.returncode == 0


def maps(archive: Path) -> bool:
    """Whether a session starts with ``archive`` mapped: with -Xshare:on the JVM refuses to
    start otherwise (another Java, other jars, or a file cut short)."""
    return _run("--check", "-Xshare:on", WORKBOOK_CLASS_ARCHIVE=str(archive))


def write() -> bool:
    """Write the archive from the workload's JVM; True once it has replaced the old one."""
    try:
        PATH.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # an environment this user may not write to
        return False
    written = PATH.with_name(f"{PATH.name}.{os.getpid()}")
    try:
        done = _run("--workload", f"-XX:ArchiveClassesAtExit={written}")
        if not (done and written.is_file() and maps(written)):
            return False
        os.replace(written, PATH)  # a JVM that maps the old archive keeps it open
        return True
    finally:
        written.unlink(missing_ok=True)


def check() -> None:
    from workbook.spark import get_spark

    assert get_spark("class-archive-check").range(3).count() == 3


if __name__ == "__main__":
    if sys.argv[1:2] == ["--workload"]:
        workload(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["--check"]:
        check()
    elif write():
        print(f"Spark's classes archived in {PATH} ({PATH.stat().st_size // 2**20} MB)")
    else:
        print("Spark's classes could not be archived; sessions start without the archive.")
