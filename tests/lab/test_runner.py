"""The runner over real SSH: parallel hosts, batching, failures, handlers, undo."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.report import NullReporter
from deploykit.result import Result, Status
from deploykit.runner import Runner, step
from deploykit.secrets import Secret
from deploykit.tasks import files, system
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]


def _writes(runner: Runner, host: str) -> list[str]:
    return [c.command for c in runner.logs[host] if c.write]


def _statuses(report: object, host: str) -> list[str]:
    return [r.status.value for r in report.hosts[host].results]  # type: ignore[attr-defined]


def test_steps_run_on_every_host_and_a_second_run_is_one_read(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("all")
    steps = [files.directory("/srv/app", mode=0o750),
             files.file("/srv/app/hello.txt", "hello\n", mode=0o640)]
    first = Runner(steps).run(hosts)
    assert first.ok
    for h in hosts:
        assert _statuses(first, h.name) == ["changed", "changed"]
        conn = lab_connection(h.name)
        assert conn.run("stat -c %a /srv/app; cat /srv/app/hello.txt").stdout == "750\nhello\n"

    again = Runner(steps)
    second = again.run(hosts)
    for h in hosts:
        assert _statuses(second, h.name) == ["ok", "ok"]
        assert _writes(again, h.name) == []
        assert len(again.logs[h.name]) == 1  # every probe batched into one round trip


def test_an_unreachable_host_fails_alone_with_a_clear_message(
    clean_lab: Lab, lab_inventory: Inventory
) -> None:
    dead = clean_lab.unused_address()  # in the lab's network, nobody there
    ghost = dataclasses.replace(lab_inventory.host("web-2"), name="ghost", address=dead)
    hosts = [*lab_inventory.select("web-1,db-1"), ghost]
    report = Runner([files.directory("/srv/reach")], connect_timeout=2).run(hosts)
    assert report.hosts["ghost"].unreachable
    assert f"cannot reach {dead}:22: no answer within 2 s" in report.hosts["ghost"].error
    assert _statuses(report, "web-1") == ["changed"]
    assert _statuses(report, "db-1") == ["changed"]


def test_a_failing_host_stops_its_own_steps_while_others_finish(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    steps = [system.command('test "$(hostname)" != web-1', name="not on web-1"),
             files.directory("/srv/after")]
    report = Runner(steps).run(lab_inventory.select("all"))
    assert _statuses(report, "web-1") == ["failed"]
    assert "exited with code 1" in report.hosts["web-1"].results[0].message
    assert _statuses(report, "web-2") == ["changed", "changed"]
    assert lab_connection("web-1").run("test -d /srv/after", check=False).exit_code == 1


def test_max_fail_percentage_aborts_the_remaining_batches(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("web-1,web-2,db-1")
    steps = [system.command('test "$(hostname)" != web-1'), files.directory("/srv/batch")]
    report = Runner(steps, serial=1, max_fail_percentage=0).run(hosts)
    assert _statuses(report, "web-1") == ["failed"]
    for name in ("web-2", "db-1"):
        assert _statuses(report, name) == ["skipped"]
        assert "max_fail_percentage" in report.hosts[name].results[0].message
        assert lab_connection(name).run("test -d /srv/batch", check=False).exit_code == 1


class _Recorder(NullReporter):
    """Records the order in which hosts start and finish steps."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def step_started(self, host: str, step: str) -> None:
        self.events.append(("start", host))

    def step_finished(self, result: Result) -> None:
        self.events.append(("finish", result.host))


def test_serial_percentage_runs_batches_one_after_another(
    clean_lab: Lab, lab_inventory: Inventory
) -> None:
    hosts = lab_inventory.select("all")  # web-1, web-2, db-1; 34% of 3 -> batches of 2, then 1
    recorder = _Recorder()
    report = Runner([files.directory("/srv/serial")], serial="34%", reporter=recorder).run(hosts)
    assert report.ok
    events = recorder.events
    db_start = events.index(("start", "db-1"))
    assert events.index(("finish", "web-1")) < db_start
    assert events.index(("finish", "web-2")) < db_start


def test_handlers_run_once_at_the_end_of_the_batch_only_when_notified(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("web")
    handler = system.command("echo x >> /srv/handler.log")
    steps = [step(files.file("/srv/conf.txt", "a\n"), notify=["reload"]),
             step(files.file("/srv/conf2.txt", "b\n"), notify=["reload"])]
    Runner(steps, handlers={"reload": handler}).run(hosts)
    Runner(steps, handlers={"reload": handler}).run(hosts)  # nothing changed: no handler
    for h in hosts:
        assert lab_connection(h.name).run("cat /srv/handler.log").stdout == "x\n"


def test_undo_restores_what_earlier_steps_changed_when_a_later_step_fails(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    web1 = lab_inventory.host("web-1")
    conn = lab_connection("web-1")
    conn.run("printf 'old\\n' > /srv/site.conf")
    steps = [files.file("/srv/site.conf", "new\n"), system.command("exit 3", name="breaks")]
    report = Runner(steps).run([web1])
    assert _statuses(report, "web-1") == ["changed", "failed"]
    assert conn.run("cat /srv/site.conf").stdout == "old\n"
    assert report.hosts["web-1"].undone and "/srv/site.conf" in report.hosts["web-1"].undone[0]


def test_fleet_undo_rolls_back_every_host_when_one_fails(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("web")
    steps = [files.file("/srv/release", "v2\n"),
             system.command('test "$(hostname)" != web-2', name="smoke test")]
    report = Runner(steps, undo="fleet").run(hosts)
    assert _statuses(report, "web-1") == ["changed", "changed"]
    assert _statuses(report, "web-2") == ["changed", "failed"]
    for h in hosts:
        assert lab_connection(h.name).run("test -e /srv/release", check=False).exit_code == 1
        assert report.hosts[h.name].undone


def test_retries_until_success(clean_lab: Lab, lab_inventory: Inventory) -> None:
    counter = ("n=$(cat /srv/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /srv/count; "
               "[ $n -ge 3 ]")
    report = Runner([step(system.command(counter), retries=4, delay=0)]).run(
        [lab_inventory.host("web-1")])
    result = report.hosts["web-1"].results[0]
    assert result.status is Status.CHANGED and result.data["attempts"] == 3

    failing = Runner([step(system.command("exit 1"), retries=1, delay=0)]).run(
        [lab_inventory.host("web-1")])
    assert failing.hosts["web-1"].results[0].data["attempts"] == 2
    assert failing.failed


def test_when_condition_uses_host_vars(clean_lab: Lab, lab_inventory: Inventory) -> None:
    report = Runner([step(files.directory("/srv/dbonly"), when="'db' in roles")]).run(
        lab_inventory.select("all"))
    assert _statuses(report, "db-1") == ["changed"]
    assert _statuses(report, "web-1") == ["skipped"]
    assert "'db' in roles" in report.hosts["web-1"].results[0].message


def test_check_mode_changes_nothing_and_reports_diffs(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    runner = Runner([files.directory("/srv/checked"), files.file("/srv/checked.txt", "x\n")],
                    check=True)
    report = runner.run([lab_inventory.host("web-1")])
    assert _statuses(report, "web-1") == ["changed", "changed"]
    assert all(r.check and r.diff for r in report.hosts["web-1"].results)
    assert _writes(runner, "web-1") == []
    assert lab_connection("web-1").run("ls /srv").stdout == ""


def test_json_report_has_every_result_and_no_secret(
    clean_lab: Lab, lab_inventory: Inventory, tmp_path: Path
) -> None:
    secret = Secret("pa55-w0rd-value")
    steps = [files.file("/srv/secret.env", secret, mode=0o600),
             system.command(["sh", "-c", "echo $0", secret], name="echo secret")]
    path = tmp_path / "report.json"
    runner = Runner(steps)
    runner.run([lab_inventory.host("web-1")], json_path=path)
    text = path.read_text()
    assert "pa55-w0rd-value" not in text
    assert all("pa55-w0rd-value" not in c.command for c in runner.logs["web-1"])
    data = json.loads(text)
    assert [r["task"] for r in data["hosts"]["web-1"]["results"]] == [
        "files.file /srv/secret.env", "echo secret"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"

