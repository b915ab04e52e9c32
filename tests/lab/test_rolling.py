"""Rolling deploys on the lab: the single-colour layout (``current`` + one gunicorn
program on port 8000) on web-1 and web-2, behind a balancer: web-1's nginx, whose
upstream on port 8080 lists both hosts (each host's own nginx is not involved).

The module keeps one deployment across its tests (the lab is reset at the end);
each test first makes v1 the live release on both hosts (``unchanged`` when it
already is).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploykit.artifacts import Artifact, build
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.secrets import Secret
from deploykit.strategies import rolling
from deploykit.tasks import http, nginx, releases, services
from deploykit.testing.lab import Lab
from deploykit.testing.sample import app_env

APP = "rollapp"
DATABASE = "rollapp"
PORT = 8000
LB_PORT = 8080
LB_UPSTREAM = f"/etc/nginx/conf.d/{APP}-lb_upstream.conf"
VERSIONS = ("v1", "v2", "v5-crash")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("artifacts")
    return {v: build(project_root / "examples" / "app", app=APP, version=v, out_dir=out,
                     wheelhouse=project_root / ".cache" / "wheelhouse") for v in VERSIONS}


@dataclass
class Fleet:
    web: list[Host]
    db: Host
    env: Secret
    built: dict[str, Artifact]
    connect: Callable[[str], Connection]
    runs: list[str] = field(default_factory=list)

    @property
    def balancer(self) -> Host:
        return self.web[0]

    def plan(self, version: str, **options: object) -> rolling.Rolling:
        options.setdefault("balancer_listen", LB_PORT)
        return rolling.Rolling(APP, self.built[version], self.env, database=DATABASE,
                               port=PORT, health_interval=0.2, **options)  # type: ignore[arg-type]

    def run_id(self, what: str) -> str:
        self.runs.append(what)
        return f"test-rolling-{len(self.runs)}-{what}"

    def baseline(self) -> None:
        """v1 on both hosts (all at once, no balancer)."""
        out = rolling.deploy(self.plan("v1", serial="100%"), self.web, self.db,
                             deploy_id=self.run_id("v1"))
        assert out.result in ("deployed", "unchanged"), out.message

    def version(self, host: Host) -> str:
        response = http.request(f"http://{host.address}:{PORT}/version")
        assert response.status == 200, response.describe()
        version: str = response.json()["version"]
        return version

    def current(self, host: str) -> str | None:
        infos = releases.list_releases(self.connect(host), APP)
        return next((i.release_id for i in infos if "current" in i.links), None)

    def release_ids(self, host: str) -> set[str]:
        return {i.release_id for i in releases.list_releases(self.connect(host), APP)}

    def lb_servers(self) -> list[tuple[str, list[str]]]:
        text = self.connect(self.balancer.name).run(["cat", LB_UPSTREAM], write=False).stdout
        return [(s.address, s.params) for s in nginx.parse_upstream(text, f"{APP}-lb")]


@pytest.fixture(scope="module")
def fleet(lab: Lab, lab_inventory: Inventory, built: dict[str, Artifact],
          lab_connection: Callable[[str], Connection]) -> Iterator[Fleet]:
    db = lab_inventory.host("db-1")
    env = app_env(db, DATABASE)
    conns: dict[str, Connection] = {}

    def connect(name: str) -> Connection:
        if name not in conns:
            conns[name] = lab_connection(name)
        return conns[name]

    yield Fleet(lab_inventory.select("web"), db, env, built, connect)
    lab.reset()


class Load:
    """Requests through the balancer until stopped (bounded: at most ``limit`` seconds)."""

    def __init__(self, url: str, limit: float = 120.0) -> None:
        self.url, self.limit = url, limit
        self.stop = threading.Event()
        self.statuses: dict[str, int] = {}
        self.versions: list[str] = []
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        ends = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < ends:
            response = http.request(self.url, timeout=5.0)
            key = str(response.status) if response.status is not None else "error"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if response.status == 200:
                self.versions.append(response.json()["version"])
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_plan_and_batch_validation(built: dict[str, Artifact], lab_inventory: Inventory) -> None:
    for bad in ({"port": 0}, {"max_fail_percentage": 150}, {"balancer_name": "a b"}):
        with pytest.raises(ConfigError):
            rolling.Rolling(APP, built["v1"], "X=1\n", **bad)
    web = lab_inventory.select("web")
    plan = rolling.Rolling(APP, built["v1"], "X=1\n", serial=2)
    with pytest.raises(ConfigError, match="serial=2 puts every web host in one batch"):
        rolling.deploy(plan, web, deploy_id="x", balancer=web[0])
    with pytest.raises(ConfigError, match="serial must be"):
        rolling.deploy(rolling.Rolling(APP, built["v1"], "X=1\n", serial="half"), web,
                       deploy_id="x")


def test_a_crashing_release_stops_after_the_first_batch_and_is_put_back(
        fleet: Fleet) -> None:
    fleet.baseline()
    web1, web2 = fleet.web
    pid2 = services.status(fleet.connect(web2.name), APP).pid
    out = rolling.deploy(fleet.plan("v5-crash", serial=1, max_fail_percentage=0), fleet.web,
                         fleet.db, deploy_id=fleet.run_id("v5"), balancer=fleet.balancer)

    assert out.result == "rolled_back", out.message
    assert out.batches == [["web-1"], ["web-2"]]
    assert (out.updated, out.failed, out.rolled_back, out.untouched, out.drained) == (
        [], ["web-1"], [], ["web-2"], [])
    assert out.message == ("stopped after batch 1: 1 of 2 hosts failed (web-1), more than "
                           "max_fail_percentage=0%; put back by their undo: web-1; "
                           "not started: web-2")
    failed = [r for r in out.report.hosts["web-1"].results if r.failed]
    assert [r.task for r in failed] == ["program rollapp -> v5-crash"]
    assert "did not reach RUNNING" in failed[0].message
    assert out.report.hosts["web-1"].undo_failed == []
    assert "web-2" not in out.report.hosts  # never touched

    # web-1 is back on v1 (program, link; the v5-crash release removed) and in service
    assert fleet.current("web-1") == "v1" and fleet.version(web1) == "v1"
    assert "v5-crash" not in fleet.release_ids("web-1")
    assert services.status(fleet.connect("web-1"), APP).running
    assert fleet.lb_servers() == [(f"{web1.address}:{PORT}", []), (f"{web2.address}:{PORT}", [])]
    # web-2: same process as before, no trace of v5-crash
    assert services.status(fleet.connect("web-2"), APP).pid == pid2
    assert fleet.current("web-2") == "v1" and "v5-crash" not in fleet.release_ids("web-2")
    assert http.request(f"http://{web1.address}:{LB_PORT}/version").json()["version"] == "v1"


def test_rolling_v1_to_v2_one_host_at_a_time_keeps_serving(fleet: Fleet) -> None:
    fleet.baseline()
    web1, web2 = fleet.web
    plan = fleet.plan("v2", serial=1)
    with Load(f"http://{web1.address}:{LB_PORT}/version") as load:
        time.sleep(0.3)
        out = rolling.deploy(plan, fleet.web, fleet.db, deploy_id=fleet.run_id("v2"),
                             balancer=fleet.balancer)
        time.sleep(0.3)

    assert out.result == "deployed", out.message
    assert out.message == "v2 serves on 2 of 2 hosts"
    assert (out.updated, out.failed, out.untouched, out.drained) == (
        ["web-1", "web-2"], [], [], [])
    assert [p for p in out.phases if p.startswith("batch")] == [
        "batch 1: drain", "batch 1: deploy", "batch 1: undrain",
        "batch 2: drain", "batch 2: deploy", "batch 2: undrain"]
    lb = out.report.hosts["web-1"].results
    drains = [(r.task, r.status.value) for r in lb if r.task.startswith("nginx: ")
              and "drain" in r.task]
    assert drains == [("nginx: drain web-1", "changed"), ("nginx: undrain web-1", "changed"),
                      ("nginx: drain web-2", "changed"), ("nginx: undrain web-2", "changed")]
    for host in ("web-1", "web-2"):
        gates = [r for r in out.report.hosts[host].results if r.task.startswith("health gate")]
        assert [(g.task, g.status.value) for g in gates] == [
            ("health gate: v2", "ok"), ("health gate: version v2", "ok")]
    for node in fleet.web:
        assert fleet.current(node.name) == "v2" and fleet.version(node) == "v2"
    assert fleet.lb_servers() == [(f"{web1.address}:{PORT}", []), (f"{web2.address}:{PORT}", [])]

    # the balancer kept serving throughout: no error, v1 then v2
    assert set(load.statuses) == {"200"}, load.statuses
    assert load.statuses["200"] > 50
    assert load.versions[0] == "v1" and load.versions[-1] == "v2"
    assert set(load.versions) == {"v1", "v2"}

    again = rolling.deploy(plan, fleet.web, fleet.db, deploy_id=fleet.run_id("v2-again"),
                           balancer=fleet.balancer)
    assert again.result == "unchanged", again.message
    assert all(r.status.value == "ok" for h in again.report.hosts.values() for r in h.results)

    checked = rolling.deploy(fleet.plan("v1", serial=1), fleet.web, fleet.db,
                             deploy_id=fleet.run_id("v1-check"), balancer=fleet.balancer,
                             check=True)
    assert checked.result == "checked", checked.message
    assert checked.message == "would deploy v1 in 2 batch(es): web-1 | web-2"
    for node in fleet.web:
        assert fleet.current(node.name) == "v2" and fleet.version(node) == "v2"
