"""max_fail_percentage judged per batch, the run-wide max_fail_total, and failing
handlers (issue 17 item 5), over real SSH."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.runner import Runner, Step, step
from deploykit.task import Task
from deploykit.tasks import files, system
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]


def _fails_on(*names: str) -> system.CommandTask:
    tests = " && ".join(f'[ "$(hostname)" != {n} ]' for n in names)
    return system.command(tests, name="fails on " + ",".join(names))


def test_max_fail_percentage_judges_each_batch_alone(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    # four hosts (web-2 twice, under a second name) in batches of two; one failure in
    # each batch is 50 % of that batch: no abort, though 2 hosts failed in all
    twin = dataclasses.replace(lab_inventory.host("web-2"), name="web-2-twin")
    hosts = [*lab_inventory.select("web-1,web-2,db-1"), twin]
    steps: list[Task | Step] = [step(system.command("exit 1", name="breaks"),
                  when="inventory_hostname in ['web-1', 'db-1']"),
             step(system.command("sleep 1", name="slow"),  # db-1 has failed by then
                  when="inventory_hostname == 'web-2-twin'"),
             files.directory("/srv/batched")]
    report = Runner(steps, serial=2, max_fail_percentage=50).run(hosts)
    assert report.hosts["web-1"].failed and report.hosts["db-1"].failed
    assert [r.status.value for r in report.hosts["web-2"].results] == [
        "skipped", "skipped", "changed"]
    assert [r.status.value for r in report.hosts["web-2-twin"].results] == [
        "skipped", "changed", "ok"]
    assert not any("max_fail_percentage" in r.message
                   for h in report.hosts.values() for r in h.results)
    assert lab_connection("web-2").run("test -d /srv/batched", check=False).exit_code == 0


def test_max_fail_percentage_still_aborts_a_batch_over_its_threshold(
    clean_lab: Lab, lab_inventory: Inventory
) -> None:
    hosts = lab_inventory.select("web-1,web-2,db-1")
    report = Runner([_fails_on("web-1", "web-2"), files.directory("/srv/x")], serial=2,
                    max_fail_percentage=50).run(hosts)
    skipped = report.hosts["db-1"].results[0]
    assert skipped.status.value == "skipped"
    assert "2 of 2 hosts of batch 1 failed" in skipped.message


def test_max_fail_total_is_a_budget_over_the_whole_run(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("web-1,web-2,db-1")
    steps = [_fails_on("web-1", "web-2"), files.directory("/srv/budget")]
    report = Runner(steps, serial=1, max_fail_total=1).run(hosts)
    assert report.hosts["web-1"].failed and report.hosts["web-2"].failed
    skipped = report.hosts["db-1"].results[0]
    assert skipped.status.value == "skipped"
    assert "2 hosts failed, more than max_fail_total=1" in skipped.message
    assert lab_connection("db-1").run("test -d /srv/budget", check=False).exit_code == 1


def test_a_failing_handler_fails_the_host_and_unwinds_like_a_step(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("web-1,web-2")
    steps: list[Task | Step] = [step(files.file("/srv/handled.conf", "new\n"), notify=["reload"]),
             files.directory("/srv/after-handler")]
    report = Runner(steps, handlers={"reload": _fails_on("web-1")}, serial=1,
                    max_fail_percentage=0).run(hosts)
    entry = report.hosts["web-1"]
    assert entry.failed
    assert any("/srv/handled.conf" in u for u in entry.undone)
    assert lab_connection("web-1").run("test -e /srv/handled.conf", check=False).exit_code == 1
    # the handler's failure counts: the next batch does not start
    assert report.hosts["web-2"].results[0].status.value == "skipped"
    assert lab_connection("web-2").run("test -e /srv/handled.conf", check=False).exit_code == 1
