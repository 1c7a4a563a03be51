"""The pins in environment.yml agree with pyproject.toml, the single source of truth."""

import tomllib

import yaml

from workbook.config import REPO_ROOT


def pyproject_pins() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = [p for group in project["optional-dependencies"].values() for p in group]
    return {p.lower() for p in [*project["dependencies"], *extras]}


def environment_pins() -> set[str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {p.lower() for p in pip if not p.startswith("-e")}


def test_every_pin_is_exact():
    assert all("==" in p for p in pyproject_pins())


def test_environment_yml_matches_pyproject():
    assert environment_pins() == pyproject_pins()


def test_environment_yml_brings_python_and_java():
    deps = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())["dependencies"]
    assert "python=3.11" in deps
    assert "openjdk=17" in deps
