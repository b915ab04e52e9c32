"""deploykit.tasks.system over real SSH on the lab host web-1, state checked with testinfra.

/etc/passwd and /etc/group are the machine's (shared by every lab host): user and group
tests use unique ``dktest_`` names and always remove them in a ``finally`` block.
/tmp is private to each lab host.
"""

from __future__ import annotations

import grp
import pwd
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deploykit.connection import Connection, LoggedCommand
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.task import UndoStack
from deploykit.tasks import system

pytestmark = pytest.mark.lab

PWNED = "'; touch /tmp/pwned #"
HOST = "web-1"


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture
def tmp(conn: Connection) -> Iterator[str]:
    """A fresh directory in web-1's private /tmp, removed afterwards; no /tmp/pwned."""
    path = f"/tmp/dktest-{uuid.uuid4().hex[:8]}"
    conn.run(["mkdir", path])
    conn.run(["rm", "-f", "/tmp/pwned"])
    yield path
    conn.run(["rm", "-rf", path])


def unique(prefix: str = "dktest_") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def free_id(taken: Callable[[int], object]) -> int:
    """An id in 47000-47999 nobody uses (the machine's passwd/group are the hosts')."""
    for candidate in random.sample(range(47000, 48000), 1000):
        try:
            taken(candidate)
        except KeyError:
            return candidate
    raise AssertionError("no free id in 47000-47999")


def writes_since(conn: Connection, start: int) -> list[LoggedCommand]:
    return [e for e in conn.log[start:] if e.write]


# -- command ---------------------------------------------------------------------------------


def test_command_with_creates_runs_once_then_only_reads(conn: Connection, host: Any,
                                                          tmp: str) -> None:
    marker = f"{tmp}/made"
    task = system.command(["touch", marker], creates=marker)
    first = task.run(conn)
    assert first.status is Status.CHANGED, first.message
    assert first.data["exit_code"] == 0
    assert host.file(marker).is_file
    start = len(conn.log)
    second = task.run(conn)
    assert second.status is Status.OK
    assert second.message == f"not run: {marker} exists (creates)"
    assert second.data["skipped_by"] == ["creates"]
    assert len(conn.log) - start == 1  # one probe round trip
    assert writes_since(conn, start) == []


def test_command_with_removes_runs_only_while_the_path_exists(conn: Connection, host: Any,
                                                               tmp: str) -> None:
    victim = f"{tmp}/old"
    conn.run(["touch", victim])
    task = system.command(["rm", victim], removes=victim)
    assert task.run(conn).status is Status.CHANGED
    assert not host.file(victim).exists
    start = len(conn.log)
    again = task.run(conn)
    assert again.status is Status.OK and again.data["skipped_by"] == ["removes"]
    assert writes_since(conn, start) == []


def test_unless_and_only_if_guards(conn: Connection, host: Any, tmp: str) -> None:
    flag = f"{tmp}/flag"
    side = f"{tmp}/side"
    run_side = ["touch", side]
    start = len(conn.log)
    blocked = system.command(run_side, only_if=f"test -e {flag}").run(conn)
    assert blocked.status is Status.OK and blocked.data["skipped_by"] == ["only_if"]
    assert writes_since(conn, start) == []
    assert not host.file(side).exists

    conn.run(["touch", flag])
    skipped = system.command(run_side, unless=f"test -e {flag}").run(conn)
    assert skipped.status is Status.OK and skipped.data["skipped_by"] == ["unless"]
    assert not host.file(side).exists

    allowed = system.command(run_side, only_if=f"test -e {flag}",
                             unless=f"test -e {side}").run(conn)
    assert allowed.status is Status.CHANGED
    assert host.file(side).exists
    # now unless holds: the same task is ok and sends no write
    start = len(conn.log)
    assert system.command(run_side, only_if=f"test -e {flag}",
                          unless=f"test -e {side}").run(conn).status is Status.OK
    assert writes_since(conn, start) == []


def test_a_broken_guard_does_not_break_the_probe(conn: Connection, host: Any,
                                                 tmp: str) -> None:
    side = f"{tmp}/side"
    result = system.command(["touch", side], unless="if then fi ((").run(conn)
    assert result.status is Status.CHANGED  # the syntax error is the guard's own non-zero exit
    assert host.file(side).exists


def test_changed_when_false_reports_ok(conn: Connection) -> None:
    result = system.command("echo hello", changed_when=lambda r: "changed" in r.stdout).run(conn)
    assert result.status is Status.OK
    assert result.data["stdout"] == "hello\n" and result.data["ran"] is True


def test_check_mode_does_not_run_the_command(conn: Connection, host: Any, tmp: str) -> None:
    side = f"{tmp}/side"
    start = len(conn.log)
    result = system.command(["touch", side]).run(conn, check=True)
    assert result.status is Status.CHANGED and result.check
    assert result.message == "would run (check mode)"
    assert conn.log[start:] == []  # no guard: not even a probe
    assert not host.file(side).exists

    guarded = system.command(["touch", side], creates=f"{tmp}/nothing").run(conn, check=True)
    assert guarded.status is Status.CHANGED and guarded.data["ran"] is False
    assert writes_since(conn, start) == []
    assert not host.file(side).exists


def test_run_in_check_mode_runs_a_read_only_command(conn: Connection) -> None:
    start = len(conn.log)
    result = system.command("hostname", run_in_check_mode=True,
                            changed_when=lambda r: False).run(conn, check=True)
    assert result.status is Status.OK and result.data["stdout"] == f"{HOST}\n"
    assert [(e.command, e.write) for e in conn.log[start:]] == [("hostname", False)]


def test_exit_code_without_check_is_recorded_not_failed(conn: Connection) -> None:
    result = system.command("exit 3", check=False).run(conn)
    assert not result.failed
    assert result.data["exit_code"] == 3


def test_exit_code_with_check_fails_naming_it(conn: Connection) -> None:
    result = system.command("echo oops >&2; exit 3").run(conn)
    assert result.failed
    assert result.message == "command exited with code 3: echo oops >&2; exit 3\noops"
    assert result.data["exit_code"] == 3 and result.data["stderr"] == "oops\n"


def test_secret_argument_and_env_reach_the_host_but_no_output(conn: Connection, host: Any,
                                                              tmp: str) -> None:
    value = f"dk-secret-{uuid.uuid4().hex}"
    token = Secret(value)
    out = f"{tmp}/seen"
    script = 'printf "%s %s" "$1" "$TOKEN" > "$2"; echo "arg=$1 env=$TOKEN"'
    start = len(conn.log)
    result = system.command(["sh", "-c", script, "sh", token, out],
                            env={"TOKEN": token}).run(conn)
    assert result.status is Status.CHANGED, result.message
    assert host.file(out).content_string == f"{value} {value}"  # really sent
    assert result.data["stdout"] == "arg=******** env=********\n"
    assert value not in str(result.to_dict()) and value not in result.task
    assert all(value not in e.command for e in conn.log[start:])

    failing = system.command(["sh", "-c", 'echo "bad $1" >&2; exit 1', "sh", token]).run(conn)
    assert failing.failed and "bad ********" in failing.message
    assert value not in str(failing.to_dict())


def test_values_are_passed_literally(conn: Connection, host: Any, tmp: str) -> None:
    echoed = system.command(["echo", PWNED], creates=PWNED, removes=f"{tmp}").run(conn)
    assert echoed.status is Status.CHANGED
    assert echoed.data["stdout"] == PWNED + "\n"
    failed = system.package(PWNED).run(conn)
    assert failed.failed and PWNED in failed.message
    assert not host.file("/tmp/pwned").exists


def test_command_undo_runs_when_unwound(conn: Connection, host: Any, tmp: str) -> None:
    made = f"{tmp}/made"
    undo = UndoStack()
    result = system.command(["touch", made], undo=["rm", "-f", made]).run(conn, undo=undo)
    assert result.changed and host.file(made).exists
    done, failed = undo.unwind(conn)
    assert (len(done), failed) == (1, [])
    assert not host.file(made).exists


# -- users and groups -------------------------------------------------------------------------


def cleanup_accounts(conn: Connection, users: list[str], groups: list[str]) -> None:
    for name in users:
        conn.run(["userdel", "-r", "--", name], check=False)
    for name in groups:
        conn.run(["groupdel", "--", name], check=False)


def test_user_lifecycle(conn: Connection, host: Any, tmp: str) -> None:
    name, extra = unique(), unique()
    home = f"{tmp}/{name}"
    try:
        assert system.group(extra).run(conn).status is Status.CHANGED
        create = system.user(name, shell="/bin/sh", home=home)  # noqa: S604 (a login shell)
        first = create.run(conn)
        assert first.status is Status.CHANGED, first.message
        assert first.diff.startswith("state: absent -> present")
        account = host.user(name)
        assert account.exists and account.shell == "/bin/sh" and account.home == home
        assert account.group == name  # a group of its own (USERGROUPS_ENAB)
        assert host.file(home).is_directory and host.file(home).user == name

        start = len(conn.log)
        assert create.run(conn).status is Status.OK
        assert writes_since(conn, start) == []

        change = system.user(name, shell="/bin/bash", groups=[extra])  # noqa: S604
        changed = change.run(conn)
        assert changed.status is Status.CHANGED, changed.message
        assert changed.diff == f"groups: (none) -> {extra}\nshell: /bin/sh -> /bin/bash"
        assert host.user(name).shell == "/bin/bash"
        assert extra in host.user(name).groups
        start = len(conn.log)
        assert change.run(conn).status is Status.OK
        assert writes_since(conn, start) == []

        remove = system.user(name, state="absent")
        assert remove.run(conn).status is Status.CHANGED
        assert not host.user(name).exists
        start = len(conn.log)
        assert remove.run(conn).status is Status.OK
        assert writes_since(conn, start) == []
    finally:
        cleanup_accounts(conn, [name], [name, extra])


def test_user_attribute_change_is_undone(conn: Connection, host: Any, tmp: str) -> None:
    name = unique()
    try:
        system.user(name, shell="/bin/sh", create_home=False,  # noqa: S604
                    home=f"{tmp}/{name}").run(conn)
        undo = UndoStack()
        uid = free_id(pwd.getpwuid)
        result = system.user(name, uid=uid, shell="/bin/bash").run(conn, undo=undo)  # noqa: S604
        assert result.status is Status.CHANGED, result.message
        assert host.user(name).uid == uid
        done, failed = undo.unwind(conn)
        assert failed == [] and len(done) == 1
        assert host.user(name).shell == "/bin/sh" and host.user(name).uid != uid
    finally:
        cleanup_accounts(conn, [name], [name])


def test_created_user_is_removed_by_undo(conn: Connection, host: Any) -> None:
    name = unique()
    try:
        undo = UndoStack()
        assert system.user(name, create_home=False, system=True).run(
            conn, undo=undo).status is Status.CHANGED
        assert host.user(name).exists and host.user(name).uid < 1000
        assert undo.unwind(conn)[1] == []
        assert not host.user(name).exists
    finally:
        cleanup_accounts(conn, [name], [name])


def test_user_home_is_passed_literally(conn: Connection, host: Any) -> None:
    name = unique()
    home = f"/tmp/{name} {PWNED}"
    try:
        result = system.user(name, home=home, create_home=False).run(conn)
        assert result.status is Status.CHANGED, result.message
        assert host.user(name).home == home
        assert not host.file("/tmp/pwned").exists
    finally:
        cleanup_accounts(conn, [name], [name])


def test_user_with_missing_primary_group_fails_with_useradd_reason(conn: Connection) -> None:
    name = unique()
    try:
        result = system.user(name, group=unique(), create_home=False).run(conn)
        assert result.failed
        assert "useradd" in result.message and "does not exist" in result.message
    finally:
        cleanup_accounts(conn, [name], [name])


def test_group_lifecycle(conn: Connection, host: Any) -> None:
    name = unique()
    try:
        create = system.group(name)
        assert create.run(conn).status is Status.CHANGED
        assert host.group(name).exists
        start = len(conn.log)
        assert create.run(conn).status is Status.OK
        assert writes_since(conn, start) == []

        old = host.group(name).gid
        gid = free_id(grp.getgrgid)
        undo = UndoStack()
        changed = system.group(name, gid=gid).run(conn, undo=undo)
        assert changed.status is Status.CHANGED and changed.diff == f"gid: {old} -> {gid}"
        assert host.group(name).gid == gid
        start = len(conn.log)
        assert system.group(name, gid=gid).run(conn).status is Status.OK
        assert writes_since(conn, start) == []
        assert undo.unwind(conn)[1] == []
        assert host.group(name).gid == old

        remove = system.group(name, state="absent")
        assert remove.run(conn).status is Status.CHANGED
        assert not host.group(name).exists
        assert remove.run(conn).status is Status.OK
    finally:
        cleanup_accounts(conn, [], [name])


def test_check_mode_creates_no_user(conn: Connection, host: Any) -> None:
    name = unique()
    try:
        start = len(conn.log)
        result = system.user(name).run(conn, check=True)
        assert result.status is Status.CHANGED and result.diff == "state: absent -> present"
        assert writes_since(conn, start) == []
        assert not host.user(name).exists
    finally:
        cleanup_accounts(conn, [name], [name])


# -- packages ---------------------------------------------------------------------------------


def test_installed_package_is_ok_without_writes(conn: Connection, host: Any) -> None:
    version = host.package("openssh-server").version
    start = len(conn.log)
    assert system.package("openssh-server").run(conn).status is Status.OK
    assert system.package(["openssh-server", "nginx"]).run(conn).status is Status.OK
    assert system.package("openssh-server", version=version).run(conn).status is Status.OK
    assert writes_since(conn, start) == []


def test_missing_package_fails_naming_it(conn: Connection) -> None:
    missing = "dktest-no-such-package"
    result = system.package(["openssh-server", missing]).run(conn)
    assert result.failed
    assert f"not installed: {missing}." in result.message
    assert f"apt-get install -y {missing}" in result.message


def test_wrong_package_version_fails(conn: Connection) -> None:
    result = system.package("openssh-server", version="0:0.1").run(conn)
    assert result.failed and "openssh-server is version" in result.message
