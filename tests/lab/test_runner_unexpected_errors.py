"""The runner over real SSH when a task raises something that is not a DeployError
(issue 17 item 1): the host fails with the traceback, and the undo still runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.runner import Runner
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks import files
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]


class _MarkOrCrash(Task):
    """Writes /srv/marker (with an undo removing it), except on ``crash_on``, where
    apply raises KeyError as a buggy task or a library would."""

    kind = "test.mark"

    def __init__(self, crash_on: str) -> None:
        super().__init__(name="mark or crash")
        self.crash_on = crash_on

    def probe_script(self) -> str:
        return "test -e /srv/marker && echo present || echo absent"

    def parse(self, output: str) -> Facts:
        return {"present": output.strip() == "present"}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if not facts["present"]:
            plan.add("state", "absent", "present")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        if conn.name == self.crash_on:
            raise KeyError("app_port")
        def remove(c: Connection) -> None:
            c.run("rm -f /srv/marker")

        undo.push("remove /srv/marker", remove)
        conn.run("touch /srv/marker")


def test_a_keyerror_on_one_host_undoes_the_whole_fleet(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = lab_inventory.select("web")  # web-1, web-2
    report = Runner([files.file("/srv/release", "v2\n"), _MarkOrCrash("web-2")],
                    undo="fleet").run(hosts)
    failed = report.hosts["web-2"].results[-1]
    assert failed.failed
    assert "unexpected error KeyError: 'app_port'" in failed.message
    assert "Traceback (most recent call last)" in failed.data["traceback"]
    for name in ("web-1", "web-2"):
        conn = lab_connection(name)
        assert conn.run("test -e /srv/release", check=False).exit_code == 1, name
        assert conn.run("test -e /srv/marker", check=False).exit_code == 1, name
    assert "remove /srv/marker" in report.hosts["web-1"].undone


def test_an_undo_that_raises_does_not_stop_the_other_undos(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    class _BadUndo(_MarkOrCrash):
        def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
            empty: dict[str, None] = {}
            undo.push("broken undo", lambda c: empty["nothing"])
            raise KeyError("after the undo was pushed")

    web1 = lab_inventory.host("web-1")
    report = Runner([files.file("/srv/release", "v2\n"), _BadUndo("web-1")]).run([web1])
    entry = report.hosts["web-1"]
    assert entry.failed
    assert any(u.startswith("broken undo: unexpected error KeyError") for u in entry.undo_failed)
    assert any("/srv/release" in u for u in entry.undone)
    assert lab_connection("web-1").run("test -e /srv/release", check=False).exit_code == 1
