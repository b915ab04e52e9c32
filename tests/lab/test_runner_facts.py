"""Facts read ahead stay valid across changes to other paths, never across a change to
their own path or through a symlink; a cold run reads ahead once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.runner import Runner
from deploykit.task import Task
from deploykit.tasks import files
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]


def test_a_cold_run_reads_ahead_once_and_a_second_run_is_one_read(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    steps: list[Task] = [files.directory(f"/srv/cold/d{d}", mode=0o755, recursive=True)
                         for d in range(3)]
    steps += [files.file(f"/srv/cold/d{i % 3}/f{i}", f"{i}\n", mode=0o640) for i in range(9)]
    steps.append(files.line_in_file("/srv/cold/settings.ini", "a=1", create=True))
    runner = Runner(steps)
    report = runner.run([lab_inventory.host("web-1")])
    assert report.ok and all(r.changed for r in report.hosts["web-1"].results)
    # one read ahead for all; a directory is made and re-probed in one round trip, a
    # content is uploaded then re-probed (two); nothing is probed twice ahead of a change
    assert len(runner.logs["web-1"]) == 1 + 3 * 1 + 10 * 2
    conn = lab_connection("web-1")
    assert conn.run("cat /srv/cold/d2/f5; stat -c %a /srv/cold/d1/f4").stdout == "5\n640\n"
    again = Runner(steps)
    assert all(r.status.value == "ok" for r in again.run(
        [lab_inventory.host("web-1")]).hosts["web-1"].results)
    assert len(again.logs["web-1"]) == 1


def test_a_later_step_on_a_path_an_earlier_step_changed_reads_it_again(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    steps = [files.file("/srv/same.ini", "a=1\n"),
             files.line_in_file("/srv/same.ini", "b=2")]
    report = Runner(steps).run([lab_inventory.host("web-1")])
    assert report.ok
    assert lab_connection("web-1").run("cat /srv/same.ini").stdout == "a=1\nb=2\n"


def test_facts_read_through_a_symlink_are_not_kept_across_a_change(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    conn = lab_connection("web-1")
    conn.run("mkdir -p /srv/releases/r1 && ln -sfn /srv/releases/r1 /srv/current")
    # the second step's path is the first one's, through the link: it must see the
    # first step's write, not the 'absent' read ahead before it
    steps = [files.file("/srv/releases/r1/app.conf", "one\n"),
             files.line_in_file("/srv/current/app.conf", "two")]
    report = Runner(steps).run([lab_inventory.host("web-1")])
    assert report.ok, report.to_json()
    assert conn.run("cat /srv/releases/r1/app.conf").stdout == "one\ntwo\n"
