"""``linewatch token`` and ``python -m aggregator token``: on the aggregator's settings (env
file or environment), SQLite and PostgreSQL. In-process (``main(argv)``, a few seconds for
the lot); the last test runs the installed commands as a user does."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aggregator_support import drop_schema

import aggregator.__main__
import linewatch.cli
from aggregator import auth
from aggregator.db import open_engine, open_sessions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINEWATCH = linewatch.cli.main
AGGREGATOR = aggregator.__main__.main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("LINEWATCH_"):
            monkeypatch.delenv(key)
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)  # the command quiets the root logger


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/linewatch.db"
        return
    url: str = request.getfixturevalue("postgres_url")
    drop_schema(url)
    yield url
    drop_schema(url)


class Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Done]:
    """``main(["token", *args, "-c", env_file])`` with ``env`` set: its code and output."""

    def call(main: Callable[[list[str]], int], *args: str, env_file: Path | None = None,
             **env: str) -> Done:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        options = [] if env_file is None else ["-c", str(env_file)]
        capsys.readouterr()
        try:
            code = main(["token", *args, *options])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        finally:
            for key in env:
                monkeypatch.delenv(key)
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return call


def check(db_url: str, token: str) -> auth.Principal:
    engine = open_engine(db_url, create=False)
    try:
        with open_sessions(engine)() as session:
            return auth.verify(session, token)
    finally:
        engine.dispose()


def test_create_list_revoke(db_url: str, tmp_path: Path, run: Callable[..., Done]) -> None:
    env_file = tmp_path / "aggregator.env"
    env_file.write_text(f"LINEWATCH_DB_URL={db_url}\n")

    made = run(LINEWATCH, "create", "--scope", "admin", "--name", "alice", env_file=env_file)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and auth.TOKEN_PATTERN.fullmatch(token)
    assert "shown only this once" in made.stderr and "Authorization: Bearer" in made.stderr
    assert token not in made.stderr
    principal = check(db_url, token)
    assert (principal.name, principal.scope) == ("alice", "admin")

    # The other command runs the same code, on the environment's settings.
    other = run(AGGREGATOR, "create", "--scope", "read", "--name", "bob",
                LINEWATCH_DB_URL=db_url)
    assert other.returncode == 0, other.stderr

    taken = run(LINEWATCH, "create", "--scope", "read", "--name", "alice", env_file=env_file)
    assert taken.returncode == 1 and "already named 'alice'" in taken.stderr
    bad = run(LINEWATCH, "create", "--scope", "read", "--name", "7", env_file=env_file)
    assert bad.returncode == 2 and "--name '7'" in bad.stderr
    assert run(LINEWATCH, "create", "--scope", "root", "--name", "x").returncode == 2

    listed = run(LINEWATCH, "list", env_file=env_file)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "name", "scope", "prefix"]
    assert [line.split()[1:3] for line in lines[1:]] == [["alice", "admin"], ["bob", "read"]]
    assert token not in listed.stdout and token[:11] in listed.stdout
    assert "cli:" in listed.stdout
    as_json = json.loads(run(AGGREGATOR, "list", "--json", env_file=env_file).stdout)
    assert [(t["id"], t["name"], t["revoked_at"]) for t in as_json] == [
        (1, "alice", None), (2, "bob", None)]
    assert all(set(t) == {"id", "name", "scope", "prefix", "created_at", "created_by",
                          "last_used_at", "revoked_at"} for t in as_json)

    revoked = run(LINEWATCH, "revoke", "alice", env_file=env_file)
    assert revoked.returncode == 0 and "revoked token 1 'alice'" in revoked.stdout
    with pytest.raises(auth.InvalidTokenError, match="revoked"):
        check(db_url, token)
    again = run(AGGREGATOR, "revoke", "1", env_file=env_file)
    assert again.returncode == 0 and "already revoked" in again.stdout
    by_id = run(AGGREGATOR, "revoke", "2", env_file=env_file)
    assert by_id.returncode == 0 and "'bob'" in by_id.stdout
    for missing in ("alice", "99"):
        gone = run(LINEWATCH, "revoke", missing, env_file=env_file)
        assert gone.returncode == 1 and "error: no " in gone.stderr, missing
    assert [t["revoked_at"] is not None
            for t in json.loads(run(LINEWATCH, "list", "--json", env_file=env_file).stdout)] == [
                True, True]


def test_a_database_that_cannot_be_reached_is_exit_3(
    tmp_path: Path, run: Callable[..., Done]
) -> None:
    done = run(LINEWATCH, "list", LINEWATCH_DB_URL="postgresql+psycopg://nobody@127.0.0.1:1/x")
    assert done.returncode == 3 and "LINEWATCH_DB_URL" in done.stderr
    assert run(LINEWATCH, "list", env_file=tmp_path / "missing.env").returncode == 2


@pytest.mark.parametrize("command", [[str(Path(sys.executable).parent / "linewatch")],
                                     [sys.executable, "-m", "aggregator"]],
                         ids=["linewatch", "python -m aggregator"])
def test_the_installed_commands_print_the_token_alone(tmp_path: Path, command: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/linewatch.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    made = subprocess.run([*command, "token", "create", "--scope", "write", "--name", "ops"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env | {"LINEWATCH_DB_URL": url}, check=False)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and check(url, token).scope == "write"
    assert "database schema upgraded from empty to" in made.stderr
    assert "INFO" not in made.stderr  # no library chatter around the answer
