"""Phased startup over the real lab: postgres -> redis -> app -> nginx.

Redis is stopped on db-1 first, so the stack really starts it (over SSH, guarded
by ``redis-cli ping``); the app is a real supervisor program on web-1 checked by
HTTP, nginx is checked by TCP. A second stack has a service whose check never
passes: the start stops at its phase, later phases are not started, and its host
is put back by undo. Programs are removed and redis runs again afterwards.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.report import NullReporter
from deploykit.result import Result, Status
from deploykit.strategies import phased
from deploykit.strategies.phased import HttpCheck, RedisCheck, Service, SqlCheck, TcpCheck
from deploykit.tasks import services, system
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

CONF = "/etc/supervisor/conf.d"
PGBIN = "/usr/lib/postgresql/15/bin"
PGDATA = "/var/lib/postgresql/15/main"
START_POSTGRES = (f"mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql && "
                  f"runuser -u postgres -- {PGBIN}/pg_ctl -w -s -D {PGDATA} "
                  f"-l /var/log/postgresql/postgresql-15-main.log start")
START_REDIS = ("mkdir -p /run/redis && chown redis:redis /run/redis && "
               "runuser -u redis -- redis-server /etc/redis/redis.conf")


class Events(NullReporter):
    """A real reporter that records the order steps start and finish in."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def step_started(self, host: str, step: str) -> None:
        with self._lock:
            self.events.append(("start", host, step))

    def step_finished(self, result: Result) -> None:
        with self._lock:
            self.events.append(("done", result.host, result.task))

    def index(self, kind: str, step: str, *, last: bool = False) -> int:
        found = [i for i, e in enumerate(self.events) if e[0] == kind and e[2] == step]
        assert found, f"no {kind} event for {step!r} in {self.events}"
        return found[-1] if last else found[0]


def postgres_service() -> Service:
    return Service("postgres", "db-1",
                   system.command(START_POSTGRES,
                                  unless=f"runuser -u postgres -- {PGBIN}/pg_ctl -D {PGDATA} "
                                         "status >/dev/null", name="start postgres"),
                   SqlCheck("postgres", retries=5, interval=0.5))


def http_server(name: str, port: int) -> services.ProgramTask:
    return services.program(name, ["/usr/bin/python3", "-m", "http.server", str(port),
                                   "--bind", "0.0.0.0"], directory="/tmp", startsecs=1,
                            task_name=f"start {name}")


@pytest.fixture
def programs(lab_connection: Callable[[str], Connection], lab: Lab) -> Iterator[list[str]]:
    """Program names used on web-1, removed afterwards; redis runs again at the end."""
    made: list[str] = []
    yield made
    conn = lab_connection("web-1")
    for name in made:
        conn.run(f"rm -f {CONF}/{name}.conf /var/log/supervisor/{name}.*")
    conn.run("supervisorctl reread >/dev/null && supervisorctl update")
    lab.start_service("db-1", "redis")


def supervisor_status(conn: Connection, name: str) -> str:
    return conn.run(["supervisorctl", "status", name], check=False, write=False).stdout


def test_stack_starts_phase_by_phase(lab: Lab, lab_inventory: Inventory,
                                     lab_connection: Callable[[str], Connection],
                                     programs: list[str]) -> None:
    app = f"dkph-app-{uuid.uuid4().hex[:6]}"
    programs.append(app)
    lab.stop_service("db-1", "redis")
    db, web = lab_connection("db-1"), lab_connection("web-1")
    assert db.run("redis-cli ping", check=False, write=False).exit_code != 0
    stack = [
        Service("nginx", "web-1",
                system.command(["nginx"], unless="test -s /run/nginx.pid && "
                               "kill -0 \"$(cat /run/nginx.pid)\"", name="start nginx"),
                TcpCheck(80, retries=5, interval=0.5), depends_on=("app",)),
        Service("app", "web-1", http_server(app, 8091),
                HttpCheck("http://{address}:8091/", retries=10, interval=0.5),
                depends_on=("redis", "postgres")),
        Service("redis", "db-1",
                system.command(START_REDIS, unless="redis-cli ping >/dev/null 2>&1",
                               name="start redis"),
                RedisCheck(retries=10, interval=0.5), depends_on=("postgres",)),
        postgres_service(),
    ]
    events = Events()
    outcome = phased.start(stack, lab_inventory, reporter=events)

    assert outcome.result == "ok", outcome.last_output
    assert outcome.phases == [["postgres"], ["redis"], ["app"], ["nginx"]]
    assert outcome.started == 4 and outcome.failed_phase is None
    statuses = {r.task: r.status for e in outcome.report.hosts.values() for r in e.results}
    assert statuses == {"start postgres": Status.OK, "check postgres": Status.OK,
                        "start redis": Status.CHANGED, "check redis": Status.OK,
                        f"start {app}": Status.CHANGED, "check app": Status.OK,
                        "start nginx": Status.OK, "check nginx": Status.OK}
    # each phase's check finished before the next phase's first step started
    order = ["postgres", "redis", "app", "nginx"]
    firsts = ["start postgres", "start redis", f"start {app}", "start nginx"]
    for before, first_next in zip(order, firsts[1:], strict=False):
        assert events.index("done", f"check {before}") < events.index("start", first_next)
    # everything is really up
    assert db.run("redis-cli ping", write=False).stdout.strip() == "PONG"
    assert "RUNNING" in supervisor_status(web, app)
    assert web.run("exec 3<>/dev/tcp/127.0.0.1/8091", write=False).exit_code == 0

    assert any(e.write for e in outcome.logs["db-1"])  # redis was started
    # a second start changes nothing and sends no write command
    again = phased.start(stack, lab_inventory)
    assert again.result == "ok"
    assert {r.status for e in again.report.hosts.values() for r in e.results} == {Status.OK}
    assert set(again.logs) == {"db-1", "web-1"}
    assert [e.command for log in again.logs.values() for e in log if e.write] == []


def test_failing_service_stops_at_its_phase(lab_inventory: Inventory,
                                            lab_connection: Callable[[str], Connection],
                                            programs: list[str]) -> None:
    broken = f"dkph-broken-{uuid.uuid4().hex[:6]}"
    programs.append(broken)
    marker = f"/tmp/dkph-{uuid.uuid4().hex[:6]}"
    web = lab_connection("web-1")
    stack = [
        postgres_service(),
        # runs on 8092, but the check asks 8093, where nothing listens
        Service("broken", "web-1", http_server(broken, 8092),
                HttpCheck("http://{address}:8093/", retries=2, interval=0.2, timeout=2),
                depends_on=("postgres",)),
        Service("redis", "db-1", system.command(["true"], name="start redis"), RedisCheck(),
                depends_on=("postgres",)),
        Service("later", "web-1", system.command(["touch", marker], name="touch marker"),
                TcpCheck(80), depends_on=("broken",)),
    ]
    outcome = phased.start(stack, lab_inventory)

    assert outcome.result == "failed" and not outcome.ok
    assert outcome.phases == [["postgres"], ["broken", "redis"], ["later"]]
    assert (outcome.started, outcome.failed_phase, outcome.failed_service,
            outcome.failed_host) == (2, 2, "broken", "web-1")
    address = lab_inventory.host("web-1").address
    assert re.fullmatch(rf"GET http://{re.escape(address)}:8093/: not ready after 3 attempts "
                        rf"in [0-9.]+ s: connection refused by {re.escape(address)}:8093",
                        outcome.last_output), outcome.last_output
    results = {r.task: r for e in outcome.report.hosts.values() for r in e.results}
    assert results["check redis"].status is Status.OK  # same phase, ran in parallel
    assert results["later"].status is Status.SKIPPED
    assert results["later"].message == "phase 3 not started: phase 2 failed (broken)"
    assert "touch marker" not in results
    assert web.run(["test", "-e", marker], check=False, write=False).exit_code == 1
    # the failed service's start was undone on its host: the program is gone
    assert "no such process" in supervisor_status(web, broken).lower()
    assert web.run(["test", "-e", f"{CONF}/{broken}.conf"], check=False,
                   write=False).exit_code == 1
