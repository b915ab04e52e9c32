"""Secrets stay secret: not in logs, reports, history, exceptions or process lists.

One blue/green deploy of the sample app whose ``.env`` carries a canary secret
(and the database password) runs while every lab host's ``ps -eo args`` is
polled, with deploykit's and paramiko's loggers captured at DEBUG. Afterwards
the canary and the password appear in none of what was captured, nor in the run
report's JSON, the verification reports, the deploy history, or the host's
process list; the ``.env`` and a database backup are closed to other users.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import testinfra.host

from deploykit import journal, pg
from deploykit.artifacts import build
from deploykit.connection import Connection
from deploykit.errors import TaskError
from deploykit.inventory import Inventory
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen
from deploykit.tasks import postgres
from deploykit.testing.lab import Lab
from deploykit.testing.sample import app_env

pytestmark = pytest.mark.lab

APP = "sampleapp"
HOSTS = ("web-1", "web-2", "db-1")


class PsWatcher:
    """Polls ``ps -eo args`` on hosts (own connections) until stopped; keeps every line."""

    def __init__(self, inventory: Inventory, hosts: tuple[str, ...]) -> None:
        self.conns = [Connection(inventory.host(h)) for h in hosts]
        self.seen: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for conn in self.conns:
                self.seen.append(conn.run(["ps", "-eo", "args"], write=False).stdout)
            self.polls += 1
            self._stop.wait(0.05)

    def __enter__(self) -> PsWatcher:
        for conn in self.conns:
            conn.open()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """deploykit's and paramiko's records at DEBUG (paramiko does not propagate)."""
    paramiko_log = logging.getLogger("paramiko")
    old = paramiko_log.level
    paramiko_log.addHandler(caplog.handler)
    paramiko_log.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        paramiko_log.removeHandler(caplog.handler)
        paramiko_log.setLevel(old)


def test_an_env_secret_never_shows_in_the_hosts_process_list(
        lab_connection: Callable[[str], Connection]) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    conn, watcher = lab_connection("web-1"), lab_connection("web-1")
    marker = f"dk-ps-{uuid.uuid4().hex[:8]}"
    result: dict[str, bytes] = {}

    def long_command() -> None:
        done = conn.run(f": {marker}; sleep 1.5; printf %s \"$DK_TOKEN\"",
                        env={"DK_TOKEN": Secret(canary)})
        result["out"] = done.stdout_bytes

    thread = threading.Thread(target=long_command)
    thread.start()
    seen = []
    while thread.is_alive():
        seen.append(watcher.run(["ps", "-eo", "args"], write=False).stdout)
    thread.join()
    assert any(marker in text for text in seen), "the command never showed in ps"
    assert not any(canary in text for text in seen)
    assert result["out"] == canary.encode()  # the variable did reach the command
    assert canary not in " ".join(entry.command for entry in conn.log)


def test_a_deploy_leaks_no_secret(
        lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
        lab_host: Callable[[str], testinfra.host.Host], debug_logs: pytest.LogCaptureFixture,
        tmp_path: Path, project_root: Path) -> None:
    web, db = lab_inventory.select("web"), lab_inventory.host("db-1")
    canary = f"canary-{uuid.uuid4().hex}"
    password = pg.PgSettings.from_host(db).password
    assert password is not None and password.reveal()
    env = Secret(app_env(db, APP).reveal() + f"SECRET_KEY={canary}\n")
    artifact = build(project_root / "examples" / "app", app=APP, version="v1",
                     out_dir=tmp_path / "artifacts",
                     wheelhouse=project_root / ".cache" / "wheelhouse")
    plan = bluegreen.BlueGreen(APP, artifact, env, database=APP,
                               verify_report_dir=str(tmp_path / "runs"))
    lab.reset()
    with pg.connect(lab_connection("db-1")) as session:
        session.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")
    try:
        with PsWatcher(lab_inventory, HOSTS) as ps:
            outcome = bluegreen.deploy(plan, web, db, deploy_id="sec-secrets-1")
        assert outcome.result == "deployed", outcome.message
        assert ps.polls >= 5, ps.polls  # it really watched through the deploy
        backup = postgres.backup(APP, app=APP, deploy_id="sec-secrets-1").run(
            lab_connection("db-1"))
        assert backup.ok, backup.message

        leaks = {
            "ps on the hosts": "\n".join(ps.seen),
            "logs (DEBUG, paramiko too)": "\n".join(
                f"{r.getMessage()} {r.args!r}" for r in debug_logs.records),
            "run report JSON": outcome.report.to_json(),
            "outcome": repr(outcome),
            "command logs": repr(outcome.logs),
            "verification reports": "\n".join(
                p.read_text(errors="replace") for p in tmp_path.joinpath("runs").rglob("*")
                if p.is_file()),
            "history": repr(journal.history(lab_connection("web-1"), APP)),
        }
        assert leaks["logs (DEBUG, paramiko too)"], "nothing was captured"
        for where, text in leaks.items():
            for name, value in (("canary", canary), ("database password", password.reveal())):
                assert value not in text, f"the {name} leaked into {where}"

        for h in web:
            dotenv = lab_host(h.name).file(f"/srv/{APP}/shared/.env")
            assert dotenv.content_string.endswith(f"SECRET_KEY={canary}\n")
            assert (dotenv.user, dotenv.mode) == ("www-data", 0o600), oct(dotenv.mode)
        dump = lab_host("db-1").file(postgres.backup_path(APP, APP, "sec-secrets-1"))
        assert dump.exists and dump.mode == 0o600, oct(dump.mode)
        assert lab_host("db-1").file(f"/var/backups/{APP}").mode & 0o007 == 0
    finally:
        lab.reset()
        with pg.connect(lab_connection("db-1")) as session:
            session.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")


def test_a_refused_database_password_is_not_in_the_error(
        lab_connection: Callable[[str], Connection]) -> None:
    canary = f"wrong-{uuid.uuid4().hex}"
    settings = pg.PgSettings(password=Secret(canary))
    with pytest.raises(TaskError) as info:
        with pg.connect(lab_connection("db-1"), settings=settings):
            pass
    text = "".join(traceback.format_exception(info.value)) + repr(info.value.args)
    assert "password authentication failed" in text or "authentication" in text
    assert canary not in text
