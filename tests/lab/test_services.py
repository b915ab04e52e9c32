"""Service tasks over real SSH: real programs under each web host's real supervisord.

Every task is checked in check mode (nothing written), applied (changed), and
applied again (ok, no write command). States are read back with supervisorctl
and testinfra over separate connections. Each test's programs get unique names
and are removed afterwards (supervisor config is not part of the lab reset).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.result import Result, Status
from deploykit.task import Task, UndoStack
from deploykit.tasks import services

pytestmark = pytest.mark.lab

HOST = "web-1"
CONF = "/etc/supervisor/conf.d"
# A real long-running program: prints its GREETING to stderr, then serves files.
SERVER = ["/bin/sh", "-c", 'echo "hello $GREETING" >&2; exec /usr/bin/python3 -m http.server '
          '"$PORT" --bind 127.0.0.1']


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture
def names(conn: Connection) -> Iterator[Callable[[], str]]:
    """``names()`` -> a fresh program name; every such program is removed afterwards."""
    made: list[str] = []

    def new() -> str:
        made.append(f"dkap-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for name in made:
        conn.run(f"rm -f {CONF}/{name}.conf /var/log/supervisor/{name}.*")
    conn.run("supervisorctl reread >/dev/null && supervisorctl update")


def writes(conn: Connection, since: int) -> list[str]:
    return [e.command for e in conn.log[since:] if e.write]


def supervisor_status(conn: Connection, name: str) -> list[str]:
    """``[STATE, detail...]`` as supervisorctl prints it, over its own command."""
    return conn.run(["supervisorctl", "status", name], check=False, write=False).stdout.split()[1:]


def apply_twice(conn: Connection, task: Task, undo: UndoStack | None = None) -> Result:
    check = task.run(conn, check=True)
    assert check.status is Status.CHANGED and check.message == "would change (check mode)"
    first = task.run(conn, undo=undo)
    assert first.status is Status.CHANGED, first.message
    assert first.diff == check.diff
    mark = len(conn.log)
    second = task.run(conn)
    assert second.status is Status.OK, second.message
    assert writes(conn, mark) == []
    return first


def test_program_lifecycle(conn: Connection, host: Any, names: Callable[[], str]) -> None:
    name = names()
    start = services.program(name, SERVER, environment={"PORT": "8201", "GREETING": "v1"},
                             user="www-data", directory="/tmp")
    mark = len(conn.log)
    assert start.run(conn, check=True).diff.endswith("state: ABSENT -> RUNNING")
    assert writes(conn, mark) == []
    assert not host.file(f"{CONF}/{name}.conf").exists

    first = apply_twice(conn, start)
    assert f"+[program:{name}]" in first.diff
    conf = host.file(f"{CONF}/{name}.conf")
    assert (conf.mode, conf.user) == (0o644, "root")
    assert 'environment=GREETING="v1",PORT="8201"\n' in conf.content_string
    state, _, pid = supervisor_status(conn, name)[:3]
    assert state == "RUNNING"
    assert host.process.get(pid=int(pid.rstrip(","))).user == "www-data"
    assert host.socket("tcp://127.0.0.1:8201").is_listening
    assert host.file(f"/var/log/supervisor/{name}.err.log").contains("hello v1")

    # a changed config restarts the program with it
    changed = services.program(name, SERVER, environment={"PORT": "8201", "GREETING": "v2"},
                               user="www-data", directory="/tmp")
    result = apply_twice(conn, changed)
    assert '-environment=GREETING="v1",PORT="8201"' in result.diff
    assert "state:" not in result.diff
    state, _, new_pid = supervisor_status(conn, name)[:3]
    assert state == "RUNNING" and new_pid != pid
    assert host.file(f"/var/log/supervisor/{name}.err.log").contains("hello v2")

    stopped = services.program(name, SERVER, environment={"PORT": "8201", "GREETING": "v2"},
                               user="www-data", directory="/tmp", state="stopped")
    assert apply_twice(conn, stopped).diff == "state: RUNNING -> STOPPED"
    assert supervisor_status(conn, name)[0] == "STOPPED"
    assert not host.socket("tcp://127.0.0.1:8201").is_listening

    gone = services.program(name, SERVER, state="absent")
    assert apply_twice(conn, gone).diff == (f"config: {CONF}/{name}.conf -> absent\n"
                                            "state: STOPPED -> ABSENT")
    assert not host.file(f"{CONF}/{name}.conf").exists
    assert services.status(conn, name).state == "ABSENT"


def test_a_program_that_exits_at_start_fails_with_its_stderr_tail(
        conn: Connection, names: Callable[[], str]) -> None:
    name = names()
    crash = services.program(name, ["/bin/sh", "-c", "echo 'cannot open config: boom' >&2; "
                                    "exit 3"], startsecs=1, startretries=1)
    result = crash.run(conn)
    assert result.status is Status.FAILED
    assert result.message.startswith(
        f"program {name} did not reach RUNNING within 10 s: FATAL (Exited too quickly "
        "(process log may have details)). Last 20 lines of its stderr log:\n")
    assert result.message.endswith("cannot open config: boom")
    assert supervisor_status(conn, name)[0] == "FATAL"
    assert not services.status(conn, name).running
    # and it stays failed: a second run tries once more and fails the same way
    assert crash.run(conn).status is Status.FAILED


def test_undo_removes_a_new_program_and_restores_a_changed_one(
        conn: Connection, host: Any, names: Callable[[], str]) -> None:
    name = names()
    undo = UndoStack()
    apply_twice(conn, services.program(name, ["/bin/sleep", "1000"]), undo)
    assert supervisor_status(conn, name)[0] == "RUNNING"
    undone, failed = undo.unwind(conn)
    assert failed == []
    assert undone == [f"remove {CONF}/{name}.conf", f"reload supervisor for {name}"]
    assert services.status(conn, name).state == "ABSENT"
    assert not host.file(f"{CONF}/{name}.conf").exists

    services.program(name, ["/bin/sleep", "1000"]).run(conn)
    before = host.file(f"{CONF}/{name}.conf").content_string
    undo = UndoStack()
    assert services.program(name, ["/bin/sleep", "2000"]).run(conn, undo=undo).changed
    assert "sleep 2000" in host.file(f"{CONF}/{name}.conf").content_string
    assert undo.unwind(conn)[1] == []
    assert host.file(f"{CONF}/{name}.conf").content_string == before
    assert supervisor_status(conn, name)[0] == "RUNNING"
    assert host.process.filter(args="/bin/sleep 1000")


def test_service_start_stop_restart(conn: Connection, names: Callable[[], str]) -> None:
    name = names()
    services.program(name, ["/bin/sleep", "1000"], autostart=False, state="present").run(conn)
    assert supervisor_status(conn, name)[0] == "STOPPED"
    undo = UndoStack()
    assert apply_twice(conn, services.service(name, "started"), undo).diff == (
        "state: STOPPED -> RUNNING")
    pid = services.status(conn, name).pid
    assert pid is not None

    restarted = services.restart(name).run(conn)
    assert restarted.status is Status.CHANGED
    assert restarted.diff == "state: RUNNING -> RUNNING (restarted)"
    after = services.status(conn, name)
    assert after.running and after.pid not in (None, pid)

    assert apply_twice(conn, services.service(name, "stopped")).diff == (
        "state: RUNNING -> STOPPED")
    assert undo.unwind(conn) == ([f"stop {name}"], [])  # it was stopped already: still so
    assert supervisor_status(conn, name)[0] == "STOPPED"


def test_unknown_program_and_missing_manager_fail_clearly(
        conn: Connection, lab_inventory: Inventory) -> None:
    result = services.restart("dkap-nosuch").run(conn)
    assert result.status is Status.FAILED
    assert result.message == ("supervisor has no program dkap-nosuch (define it with "
                              "services.program)")
    systemd_host = dataclasses.replace(lab_inventory.host(HOST),
                                       vars={**lab_inventory.host(HOST).vars,
                                             "service_manager": "systemd"})
    other = Connection(systemd_host)
    try:
        result = services.program("dkap-x", ["/bin/true"]).run(other)
    finally:
        other.close()
    assert result.status is Status.FAILED
    assert result.message == ("service manager systemd: systemd is not running on this host "
                              "(set the host var service_manager)")


def test_every_value_reaches_supervisor_literally(conn: Connection, host: Any,
                                                  names: Callable[[], str]) -> None:
    name = names()
    odd = "it's $HOME `id` 100%"
    apply_twice(conn, services.program(name, ["/bin/sh", "-c", 'echo "$1" >&2; sleep 1000',
                                              "sh", odd]))
    assert host.file(f"/var/log/supervisor/{name}.err.log").content_string == odd + "\n"


def test_ready_started_returns_once_the_process_is_up_and_a_crash_still_shows(
        conn: Connection, names: Callable[[], str]) -> None:
    """``ready="started"``: no ``startsecs`` wait (the caller's health check decides);
    supervisor's own start rule still turns a program that exits at start FATAL."""
    name = names()
    # startsecs=600: waiting for RUNNING would take ten minutes
    task = services.program(name, ["/bin/sleep", "1000"], startsecs=600, ready="started")
    first = apply_twice(conn, task)
    assert first.diff.endswith("state: ABSENT -> RUNNING")
    assert supervisor_status(conn, name)[0] == "STARTING"
    before = conn.run(["pgrep", "-f", "^/bin/sleep 1000"]).stdout.split()
    restarted = services.restart(name, startsecs=600, ready="started").run(conn)
    assert restarted.status is Status.CHANGED, restarted.message
    assert supervisor_status(conn, name)[0] == "STARTING"
    after = conn.run(["pgrep", "-f", "^/bin/sleep 1000"]).stdout.split()
    assert len(before) == len(after) == 1 and after != before  # a new process

    crash = names()
    services.program(crash, ["/bin/sh", "-c", "echo 'bad config' >&2; exit 3"], startsecs=1,
                     startretries=0, ready="started").run(conn)  # it may exit before the wait
    conn.run(f"for i in $(seq 100); do supervisorctl status {crash} | grep -q FATAL && exit; "
             "sleep 0.2; done; exit 1")
    assert services.status(conn, crash).state == "FATAL"
    assert services.start_failure(conn, name) is None  # the sleeper is still starting
    why = services.start_failure(conn, crash)
    assert why is not None and why.startswith(f"program {crash} is FATAL")
    assert why.endswith("bad config")
