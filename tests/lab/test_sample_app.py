"""The sample app end to end: real gunicorn under real supervisor on web-1, talking to
the real PostgreSQL and Redis on db-1 over the lab network, fetched over HTTP from
the controller.

Each test deploys with the Runner, the way a script would: the shared ``.env``
(a Secret: it holds the postgres password), :func:`releases.install`,
:func:`releases.switch` and a supervisor program running gunicorn from the
release directory (so a new release changes the program's config, which
restarts it). Each test has its own app name, port and database.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploykit import pg
from deploykit.artifacts import Artifact, build
from deploykit.connection import Connection
from deploykit.inventory import Host, Inventory
from deploykit.pg import PgSettings
from deploykit.result import RunReport
from deploykit.runner import Runner
from deploykit.secrets import Secret
from deploykit.task import Task
from deploykit.tasks import files, releases, services
from deploykit.testing.sample import app_env

pytestmark = pytest.mark.lab

WEB, DB = "web-1", "db-1"
VERSIONS = ("v1", "v2", "v3-broken", "v4-slow", "v5-crash")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("artifacts")
    return {v: build(project_root / "examples" / "app", app="sampleapp", version=v,
                     out_dir=out, wheelhouse=project_root / ".cache" / "wheelhouse")
            for v in VERSIONS}


@pytest.fixture(scope="module")
def migrations(project_root: Path) -> Path:
    return project_root / "examples" / "app" / "migrations"


@dataclass
class Site:
    """One deployment of the sample app on web-1: its names, port, database and URL."""

    app: str
    service: str
    port: int
    dbname: str
    web: Host
    db: Host

    @property
    def url(self) -> str:
        return f"http://{self.web.address}:{self.port}"

    def env(self) -> Secret:
        env = app_env(self.db, self.dbname,
                      header="# sampleapp settings (written by the test)\n")
        return Secret(f"{env.reveal()}PORT={self.port}\n")

    def steps(self, artifact: Artifact) -> list[Task]:
        """The deploy: shared .env, install, switch, the gunicorn program."""
        base = f"/srv/{self.app}"
        rel = releases.release_dir(self.app, artifact.release_id)
        return [
            files.directory(f"{base}/shared", recursive=True),
            files.file(f"{base}/shared/.env", self.env(), mode=0o640, group="www-data"),
            releases.install(self.app, artifact),
            releases.switch(self.app, artifact.release_id),
            self.program(rel),
        ]

    def program(self, release: str) -> services.ProgramTask:
        """The gunicorn program, running ``release`` (a release directory)."""
        return services.program(
            self.service, [f"{release}/venv/bin/gunicorn", "-c", "gunicorn.conf.py",
                           "sampleapp.web:application"],
            directory=release, user="www-data", startsecs=2)

    def deploy(self, artifact: Artifact) -> tuple[Runner, RunReport]:
        runner = Runner(self.steps(artifact))
        return runner, runner.run([self.web])

    def get(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any, float]:
        """``(status, JSON body, seconds)`` of one request from the controller."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        return status, json.loads(raw), time.monotonic() - started


@pytest.fixture
def site(clean_lab: Any, lab_inventory: Inventory,
         lab_connection: Callable[[str], Connection]) -> Iterator[Callable[[int], Site]]:
    """``site(port)``: a new app name, program and database; all removed afterwards."""
    made: list[Site] = []
    db_conn = lab_connection(DB)

    def new(port: int) -> Site:
        tag = uuid.uuid4().hex[:6]
        s = Site(f"dkapp{tag}", f"dkapp{tag}", port, f"dkapp_{tag}",
                 lab_inventory.host(WEB), lab_inventory.host(DB))
        with pg.connect(db_conn) as db:
            db.execute(f"CREATE DATABASE {s.dbname}")
        made.append(s)
        return s

    yield new
    web = lab_connection(WEB)
    for s in made:
        web.run(f"rm -f /etc/supervisor/conf.d/{s.service}.conf "
                f"/var/log/supervisor/{s.service}.*")
    web.run("supervisorctl reread >/dev/null && supervisorctl update")
    with pg.connect(db_conn) as db:
        for s in made:
            db.execute(f"DROP DATABASE IF EXISTS {s.dbname} WITH (FORCE)")


def migrate(lab_connection: Callable[[str], Connection], site: Site, folder: Path,
            upto: int) -> None:
    """Apply the app's up migrations 0001..upto (the migrations task's job in a real run)."""
    with pg.connect(lab_connection(DB), site.dbname) as db:
        for path in sorted(folder.glob("*.up.sql")):
            if int(path.name[:4]) <= upto:
                db.execute(path.read_text())


def statuses(report: RunReport) -> list[str]:
    return [r.status.value for r in report.hosts[WEB].results]


def test_v1_fresh_deploy_is_healthy_and_a_second_deploy_writes_nothing(
        site: Callable[[int], Site], built: dict[str, Artifact], migrations: Path,
        lab_connection: Callable[[str], Connection]) -> None:
    s = site(8301)
    migrate(lab_connection, s, migrations, 1)
    _, report = s.deploy(built["v1"])
    assert report.ok, report.to_json()
    assert statuses(report) == ["changed"] * 5
    password = PgSettings.from_host(s.db).password
    assert password is not None and password.reveal() not in report.to_json()
    assert report.hosts[WEB].results[1].diff.splitlines()[1] == "(secret content changed)"
    assert services.status(lab_connection(WEB), s.service).running

    status, health, _ = s.get("/health")
    assert status == 200
    assert health["status"] == "ok" and health["version"] == "v1"
    assert {name: check["status"] for name, check in health["checks"].items()} == {
        "db": "ok", "redis": "ok", "disk": "ok"}
    assert health["checks"]["disk"]["free_mb"] > 0
    assert s.get("/version")[:2] == (200, {"version": "v1", "release": "v1", "features": []})

    status, created, _ = s.get("/api/items", {"name": "first item"})
    assert status == 201 and created["name"] == "first item" and "note" not in created
    status, listed, _ = s.get("/api/items")
    assert status == 200 and [i["name"] for i in listed["items"]] == ["first item"]
    assert s.get("/api/items", {"name": ""})[:2] == (
        400, {"error": "'name' must be a string of 1 to 200 characters"})
    assert s.get(f"/api/items/{created['id']}")[0] == 404  # a v2 endpoint
    status, stats, _ = s.get("/api/stats")
    assert status == 200 and stats["items"] == 1 and stats["created_total"] >= 1

    again = Runner(s.steps(built["v1"]))
    second = again.run([s.web])
    assert statuses(second) == ["ok"] * 5
    assert [c.command for c in again.logs[WEB] if c.write] == []
    assert len(again.logs[WEB]) == 1  # every step's probe in one round trip, nothing else


def test_v3_broken_runs_but_health_names_the_failing_check(
        site: Callable[[int], Site], built: dict[str, Artifact], migrations: Path,
        lab_connection: Callable[[str], Connection]) -> None:
    s = site(8302)
    migrate(lab_connection, s, migrations, 2)
    _, report = s.deploy(built["v3-broken"])
    assert report.ok, report.to_json()
    assert services.status(lab_connection(WEB), s.service).running
    status, health, _ = s.get("/health")
    assert status == 503
    assert health["status"] == "fail" and health["failing"] == ["db"]
    assert health["checks"]["db"]["error"] == 'relation "item_tags" does not exist'
    assert health["checks"]["redis"]["status"] == health["checks"]["disk"]["status"] == "ok"
    assert s.get("/api/items", {"name": "still works"})[0] == 201


def test_v5_crash_fails_the_program_step_with_its_log_and_is_undone(
        site: Callable[[int], Site], built: dict[str, Artifact], lab_host: Callable[[str], Any],
        lab_connection: Callable[[str], Connection]) -> None:
    s = site(8303)
    _, report = s.deploy(built["v5-crash"])
    assert statuses(report) == ["changed", "changed", "changed", "changed", "failed"]
    failure = report.hosts[WEB].results[-1]
    assert failure.task == f"services.program {s.service}"
    assert failure.message.startswith(f"program {s.service} did not reach RUNNING within "
                                      "23 s: FATAL (Exited too quickly")
    assert failure.message.endswith(  # gunicorn's last words, from the stderr log
        "\nError: sampleapp v5-crash: startup self-check failed, exiting (this version is "
        "built to crash at start)")
    # the runner unwound the host: program gone, link and release removed, .env too
    assert report.hosts[WEB].undo_failed == []
    assert services.status(lab_connection(WEB), s.service).state == "ABSENT"
    host = lab_host(WEB)
    assert not host.file(f"/srv/{s.app}/releases/v5-crash").exists
    assert not host.file(f"/srv/{s.app}/current").exists
    assert not host.file(f"/srv/{s.app}/shared/.env").exists


def test_upgrade_to_v2_with_its_migration_then_roll_back_to_v1(
        site: Callable[[int], Site], built: dict[str, Artifact], migrations: Path,
        lab_connection: Callable[[str], Connection]) -> None:
    s = site(8304)
    migrate(lab_connection, s, migrations, 1)
    assert s.deploy(built["v1"])[1].ok
    old_item = s.get("/api/items", {"name": "from v1"})[1]

    migrate_0002 = migrations / "0002_add_item_note.up.sql"
    with pg.connect(lab_connection(DB), s.dbname) as db:
        db.execute(migrate_0002.read_text())
    assert s.get("/api/items")[0] == 200  # v1 still works on v2's schema
    _, report = s.deploy(built["v2"])
    assert statuses(report) == ["ok", "ok", "changed", "changed", "changed"]
    assert s.get("/version")[1]["version"] == "v2"
    status, item, _ = s.get("/api/items", {"name": "from v2", "note": "with a note"})
    assert status == 201 and item["note"] == "with a note"
    assert s.get(f"/api/items/{old_item['id']}")[:2] == (200, {**old_item, "note": ""})

    conn = lab_connection(WEB)
    # v2 has v1's dependencies: it runs on v1's environment, and no other was built
    base = f"/srv/{s.app}"
    v1_env, v2_env, *envs = conn.run(f"readlink -f {base}/releases/v1/venv "
                                     f"{base}/releases/v2/venv; ls {base}/envs").stdout.split()
    assert v1_env == v2_env and envs == [v1_env.rsplit("/", 1)[1]]
    back = Runner([releases.rollback(s.app, from_release="v2"),
                   s.program(releases.release_dir(s.app, "v1"))]).run([s.web])
    assert statuses(back) == ["changed", "changed"]
    assert s.get("/version")[1]["version"] == "v1"
    assert [i["name"] for i in s.get("/api/items")[1]["items"]] == ["from v2", "from v1"]
    states = {r.release_id: r.state for r in releases.list_releases(conn, s.app)}
    assert states == {"v1": "current", "v2": "failed"}


def test_v4_slow_is_healthy_but_slow_on_its_api(
        site: Callable[[int], Site], built: dict[str, Artifact], migrations: Path,
        lab_connection: Callable[[str], Connection]) -> None:
    s = site(8305)
    migrate(lab_connection, s, migrations, 2)
    assert s.deploy(built["v4-slow"])[1].ok
    status, health, _ = s.get("/health")
    assert status == 200 and health["version"] == "v4-slow"
    for path in ("/version", "/api/items"):
        status, _, seconds = s.get(path)
        assert status == 200 and seconds >= 1.0, (path, seconds)

