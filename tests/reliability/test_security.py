"""Secrets stay out of the repository, and the serving path cannot write.

The credential scan reads every file git would commit (tracked, plus new files that are not
ignored), notebook outputs included, for the secret values of ``.env.example`` (allowed
only there) and for secret-shaped text. A planted secret in a copy proves it would catch one.
Compose's port bindings are checked by tests/stack/test_compose.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import psycopg2.errors
import pytest
import read_only
from psycopg2.extensions import parse_dsn

from workbook import services, serving, store
from workbook.config import REPO_ROOT, required

SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|ACCESS")
# A short value (an access key id such as "workbook") is also an everyday word: it counts
# only where it is assigned to its variable; a long one counts anywhere.
STRONG_LENGTH = 12
PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{30,}"),
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "password literal": re.compile(
        r"(?i)\b(password|passwd|pwd)\b[\"']?\s*(?:=|:\s)\s*[\"']([^\"'\s$<>{}()]{4,})[\"']"
    ),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+]*://[^\s/:@'\"]+:[^\s/:@'\"$<>{}]+@"),
    "MinIO default credentials": re.compile(r"\bminioadmin\b"),
}


def env_example_secrets(path: Path) -> dict[str, str]:
    secrets = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = (part.strip().strip("'\"") for part in line.split("=", 1))
            if SECRET_NAME.search(name) and value:
                secrets[name] = value
    return secrets


def committed_files(repo: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [repo / name for name in listed.split("\0") if name and (repo / name).is_file()]


def scan(repo: Path) -> list[str]:
    """Every finding as 'path:line: what'; .env.example is where the defaults belong."""
    secrets = env_example_secrets(repo / ".env.example")
    findings = []
    for path in committed_files(repo):
        relative = path.relative_to(repo)
        if relative.as_posix() == ".env.example":
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for name, value in secrets.items():
                assigned = re.search(rf"{name}[\"']?\s*[=:]\s*[\"']?{re.escape(value)}\b", line)
                if (len(value) >= STRONG_LENGTH and value in line) or assigned:
                    findings.append(f"{relative}:{number}: the value of {name}")
            for what, pattern in PATTERNS.items():
                if pattern.search(line):
                    findings.append(f"{relative}:{number}: {what}")
    return findings


def test_no_credential_in_any_committed_file():
    assert scan(REPO_ROOT) == []


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """A throw-away clone of the working tree (tracked and new files), as its own repository."""
    copy = tmp_path_factory.mktemp("repo")
    for path in committed_files(REPO_ROOT):
        target = copy / path.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    return copy


def planted(kind: str) -> str:
    """Secret-shaped text, built here so that this file itself holds none."""
    secrets = env_example_secrets(REPO_ROOT / ".env.example")
    return {
        "env_secret": f"pw = '{secrets['FEATURES_WRITER_PASSWORD']}'",
        "env_short_value": f"S3_ACCESS_KEY={secrets['S3_ACCESS_KEY']}",
        "aws_key": "key = " + "AKIA" + "Q" * 16,
        "password_literal": "connect(password=" + "'hunter2hunter2')",
        "url_password": "postgresql://admin:" + "s3cr3t" + "@db:5432/x",
        "notebook_output": '"text": ["' + secrets["S3_SECRET_KEY"] + '\\n"]',
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "env_secret",
        "env_short_value",
        "aws_key",
        "password_literal",
        "url_password",
        "notebook_output",
    ],
)
def test_the_scan_catches_a_planted_secret(repo_copy, kind):
    target = repo_copy / "notebooks" / "planted.ipynb"
    target.parent.mkdir(exist_ok=True)
    target.write_text(planted(kind) + "\n")
    subprocess.run(["git", "add", "-A"], cwd=repo_copy, check=True)
    try:
        findings = scan(repo_copy)
    finally:
        target.unlink()
    assert [f for f in findings if f.startswith("notebooks/planted.ipynb:1:")], findings


def test_the_scan_leaves_env_example_alone(repo_copy):
    assert scan(repo_copy) == []


# -- the serving path on the stack is read-only -------------------------------------------


def test_stack_serving_path_connects_read_only_and_cannot_write(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBOOK_PROFILE", "stack")
    try:
        services.require("postgres")
    except (services.ServiceUnavailableError, RuntimeError) as error:
        pytest.skip(f"the stack is not running ({error})")
    writer = store.connect()
    store.create_tables(writer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from fastapi.testclient import TestClient
    with TestClient(serving.create_app(str(tmp_path / "no-model.json"))) as client:
        online = client.app.state.service.store()
        assert parse_dsn(online._conninfo)["user"] == required("FEATURES_READER_USER")
        with online._cursor() as cur:
            cur.execute("SELECT current_user, count(*) FROM daily_account_features")
            user, rows_before = cur.fetchone()
            assert user == required("FEATURES_READER_USER")
            for statement in read_only.WRITES:
                with pytest.raises(
                    (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ReadOnlySqlTransaction)
                ):
                    cur.execute(statement)
    assert len(store.read_all()) == rows_before
    writer.close()
