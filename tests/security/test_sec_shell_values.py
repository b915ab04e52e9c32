"""Hostile values in everything a user passes that reaches a shell, on the lab.

Every value below carries a command that would create a canary file if any shell
ever ran it: paths, app names, versions (release ids), service names, user names,
flag names, database and role names, deploy ids. Each call must either refuse the
value with a clear error or use it literally (a path with ``;`` in its name is
created under that exact name); afterwards the canary exists neither on the host
nor on the controller. A NUL byte, which no command line can carry, is refused
with an error that says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploykit import journal, pg
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.result import Result, Status
from deploykit.tasks import files, flags, postgres, releases, services, system

pytestmark = pytest.mark.lab

CANARY = f"/tmp/dk-pwned-{uuid.uuid4().hex[:8]}"
PAYLOADS = [
    f"x; touch {CANARY}",
    f"x$(touch {CANARY})",
    f"x`touch {CANARY}`",
    f"x' ; touch {CANARY} #",
    f'x" ; touch {CANARY} #',
    f"x\ntouch {CANARY}",
    f"x && touch {CANARY} || touch {CANARY}",
    f"-x | touch {CANARY}",
]
BASE = "/srv/dk-security"


@pytest.fixture(scope="module")
def web(lab_connection: Callable[[str], Connection]) -> Iterator[Connection]:
    conn = lab_connection("web-1")
    conn.run(["mkdir", "-p", BASE])
    yield conn
    conn.run(["rm", "-rf", BASE])


@pytest.fixture(scope="module")
def db(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection("db-1")


@pytest.fixture(autouse=True)
def no_canary(lab_connection: Callable[[str], Connection]) -> Iterator[None]:
    """After each test: the canary exists on no host and not on the controller."""
    yield
    for host in ("web-1", "db-1"):
        found = lab_connection(host).run(["ls", "-d", CANARY], check=False, write=False)
        assert found.failed, f"{CANARY} was created on {host}: a value was executed"
    assert not Path(CANARY).exists(), f"{CANARY} was created on the controller"


def outcome(call: Callable[[], Any]) -> str:
    """``refused`` (a DeployError or a failed Result with a message) or ``done``."""
    try:
        value = call()
    except DeployError as exc:
        assert str(exc).strip()
        return "refused"
    if isinstance(value, Result):
        if value.status is Status.FAILED:
            assert value.message.strip()
            return "refused"
        assert value.status in (Status.CHANGED, Status.OK), value
    return "done"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_paths_are_quoted_and_used_literally(web: Connection, payload: str) -> None:
    name = payload.replace("/", "_")
    path = f"{BASE}/{name}"
    assert outcome(lambda: files.directory(path, mode=0o750).run(web)) == "done"
    assert outcome(lambda: files.file(f"{path}/f", "hello\n").run(web)) == "done"
    assert outcome(lambda: files.symlink(f"{path}/l", f"{path}/f").run(web)) == "done"
    # the exact name exists: the value was quoted, not cut at a metacharacter
    probe = web.run(["cat", "--", f"{path}/l"], write=False)
    assert probe.stdout == "hello\n"
    assert outcome(lambda: files.absent(path).run(web)) == "done"
    assert web.run(["test", "-e", path], check=False, write=False).failed


@pytest.mark.parametrize("payload", PAYLOADS)
def test_names_that_become_commands_are_refused_or_quoted(
        web: Connection, db: Connection, payload: str) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "program name": lambda: services.program(payload, ["sleep", "60"]).run(web),
        "service status": lambda: services.status(web, payload),
        "app name (switch)": lambda: releases.switch(payload, "v1").run(web),
        "release id (switch)": lambda: releases.switch("sampleapp", payload).run(web),
        "app name (rollback)": lambda: releases.rollback(payload).run(web),
        "app name (history)": lambda: journal.history(web, payload),
        "flag name": lambda: flags.flag(payload, enabled=True).run(db),
        "backup app": lambda: postgres.backup("postgres", app=payload, deploy_id="d1").run(db),
        "backup deploy id": lambda: postgres.backup("postgres", app="sec",
                                                    deploy_id=payload).run(db),
        "package name": lambda: system.package(payload).run(web),
    }
    seen = {what: _safe_outcome(call) for what, call in calls.items()}
    bad = {what: how for what, how in seen.items() if how not in ("refused", "done")}
    assert not bad, bad


def test_hostile_user_and_group_names_are_refused_with_a_deploy_error(web: Connection) -> None:
    assert outcome(lambda: system.user(PAYLOADS[0]).run(web)) == "refused"
    assert outcome(lambda: system.group(PAYLOADS[0]).run(web)) == "refused"


def _safe_outcome(call: Callable[[], Any]) -> str:
    try:
        return outcome(call)
    except Exception as exc:  # what the test reports: not a DeployError
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("payload", [PAYLOADS[0], PAYLOADS[3], PAYLOADS[4], PAYLOADS[5]])
def test_database_and_role_names_are_sql_identifiers(db: Connection, payload: str) -> None:
    """A database and a role named with SQL and shell metacharacters are created under
    that exact name (``sql.Identifier``), then dropped; nothing else is touched."""
    name = payload.replace("\n", " ")[:60]
    try:
        assert postgres.role(name, login=False).run(db).status is Status.CHANGED
        assert postgres.database(name, owner=name).run(db).status is Status.CHANGED
        with pg.connect(db) as session:
            owner = session.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                [name]).fetchone()
        assert owner == (name,)
        assert postgres.database(name, owner=name).run(db).status is Status.OK
    finally:
        postgres.database(name, state="absent", force=True).run(db)
        postgres.role(name, state="absent").run(db)


def test_nul_bytes_are_refused_with_a_clear_error(web: Connection) -> None:
    assert outcome(lambda: files.file(f"{BASE}/a\x00b", "x").run(web)) == "refused"
    assert outcome(lambda: services.status(web, "a\x00b")) == "refused"
    with pytest.raises(ConfigError, match="NUL byte"):
        web.run("echo a\x00b")
    with pytest.raises(ConfigError, match="NUL byte") as info:
        web.run(["true"], env={"TOKEN": "a\x00b"})
    assert info.value.host == "web-1"
    assert outcome(lambda: releases.switch("sampleapp", "v1\x00x").run(web)) == "refused"
    # nothing reached the host: no entry of the command log holds a NUL
    assert not any("\x00" in entry.command for entry in web.log)
