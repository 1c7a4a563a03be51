"""A missing or old Java is reported before Spark starts, with what to install."""

import pytest

from workbook import spark


def fake_java(tmp_path, version_line: str):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return home


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
    ],
)
def test_reads_the_major_version(tmp_path, monkeypatch, line, major):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, line)))
    assert spark.java_major_version() == major


def test_old_java_is_refused_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'openjdk version "11.0.2"')))
    with pytest.raises(spark.JavaNotFoundError, match="Java 11 is too old.*OpenJDK 17"):
        spark.check_java()


def test_missing_java_is_refused_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(spark.JavaNotFoundError, match="No Java runtime found.*install OpenJDK 17"):
        spark.check_java()
