"""Blue/green deploys of the real sample app, on the lab: one story, in order.

Two web hosts (nginx + supervisor + gunicorn) and db-1 (PostgreSQL, Redis).
The module's tests run in file order and share the fleet's state, like an
operator's week: v1 fresh, v1 -> v2 under load, v2 again (a no-op), then three
bad releases that must never disturb v2 (v3-broken fails its health gate,
v4-slow is switched back after verification, v5-crash never starts), a
``releases.rollback`` of ``current``, and two nginx configurations ``nginx -t``
rejects (one fed through the strategy, one already on the host). State is read
back with testinfra, psycopg and HTTP through nginx; while a deploy runs, a
bounded load loop (:class:`LoadLoop`) requests ``/version`` through nginx.

At the end the hosts are reset and the ``sampleapp`` database is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testinfra.host

from deploykit import pg
from deploykit.artifacts import Artifact, build
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.result import Result
from deploykit.runner import Runner
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen
from deploykit.strategies.bluegreen import BlueGreen, DeployOutcome
from deploykit.tasks import http, releases
from deploykit.testing.lab import Lab
from deploykit.testing.load import LoadLoop
from deploykit.testing.sample import app_env

pytestmark = pytest.mark.lab

APP = "sampleapp"
VERSIONS = ("v1", "v2", "v3-broken", "v4-slow", "v5-crash")
SUPERVISORCTL = ("supervisorctl", "/etc/supervisor/supervisord.conf")
BROKEN_INCLUDE = "/etc/nginx/conf.d/zz-broken.conf"
# every nginx path a deploy may touch: upstreams, sites, their links, the colour marker
NGINX_STATE = ("for f in /etc/nginx/conf.d/* /etc/nginx/sites-available/* "
               "/etc/nginx/sites-enabled/* /etc/nginx/deploykit/*.active; do "
               'if [ -L "$f" ]; then printf "%s -> %s\\n" "$f" "$(readlink "$f")"; '
               'elif [ -f "$f" ]; then sha256sum "$f"; fi; done')


# -- the load loop ----------------------------------------------------------------------------


# -- the story's fixtures -------------------------------------------------------------------


@dataclass
class Story:
    """The fleet, the artifacts and the helpers every step of the story uses."""

    lab: Lab
    web: list[Host]
    db: Host
    artifacts: dict[str, Artifact]
    env: Secret
    ssh: Callable[[str], Connection]
    infra: Callable[[str], testinfra.host.Host]
    outcomes: list[DeployOutcome] = field(default_factory=list)

    def plan(self, version: str, **options: Any) -> BlueGreen:
        options.setdefault("database", APP)
        return BlueGreen(APP, self.artifacts[version], self.env, **options)

    def deploy(self, version: str, **options: Any) -> DeployOutcome:
        outcome = bluegreen.deploy(self.plan(version, **options), self.web, self.db,
                                   deploy_id=f"test-bg-{len(self.outcomes) + 1}-{version}")
        self.outcomes.append(outcome)
        return outcome

    def urls(self, path: str) -> list[str]:
        """``path`` through nginx on every web host."""
        return [f"http://{h.address}{path}" for h in self.web]

    def load(self) -> LoadLoop:
        return LoadLoop(self.urls("/version"))

    def versions(self) -> dict[str, str]:
        """The version nginx serves on each web host now."""
        return {h.name: http.request(f"http://{h.address}/version").json()["version"]
                for h in self.web}

    def nginx_state(self) -> dict[str, str]:
        """Per web host: sha256 of every nginx config file and marker, targets of links."""
        state = {}
        for h in self.web:
            text = self.ssh(h.name).run(NGINX_STATE).stdout
            assert "sampleapp_upstream.conf" in text, text  # the deploy's files are there
            state[h.name] = text
        return state

    def program(self, host: str, color: str) -> str:
        """The supervisor state of a colour's program."""
        status: str = self.infra(host).supervisor(f"{APP}-{color}", *SUPERVISORCTL).status
        return status

    def link(self, host: str, name: str) -> str:
        """Where ``/srv/sampleapp/<name>`` points."""
        target: str = self.infra(host).file(f"/srv/{APP}/{name}").linked_to
        return target


def _drop_database(ssh: Callable[[str], Connection]) -> None:
    with pg.connect(ssh("db-1")) as db:
        db.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")


@pytest.fixture(scope="module")
def story(lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
          lab_host: Callable[[str], testinfra.host.Host],
          tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Iterator[Story]:
    out = tmp_path_factory.mktemp("bluegreen-artifacts")
    artifacts = {v: build(project_root / "examples" / "app", app=APP, version=v, out_dir=out,
                          wheelhouse=project_root / ".cache" / "wheelhouse")
                 for v in VERSIONS}
    db = lab_inventory.host("db-1")
    env = app_env(db, APP)
    lab.reset()
    _drop_database(lab_connection)
    try:
        yield Story(lab, lab_inventory.select("web"), db, artifacts, env, lab_connection,
                    lab_host)
    finally:
        for h in lab_inventory.select("web"):
            lab.nsenter(h.name, ["rm", "-f", BROKEN_INCLUDE], check=False)
        lab.reset()
        _drop_database(lab_connection)


def _failures(outcome: DeployOutcome) -> dict[str, list[Result]]:
    return {host: [r for r in entry.results if r.failed]
            for host, entry in outcome.report.hosts.items()
            if any(r.failed for r in entry.results)}


def _writes(outcome: DeployOutcome) -> list[str]:
    return [entry.command for log in outcome.logs.values() for entry in log if entry.write]


def _served(record: Callable[[str, object], None], name: str, load: LoadLoop,
            versions: set[str]) -> None:
    """Record what the load loop saw during ``name``; assert it got only HTTP 200 from
    exactly ``versions``, all through the deploy."""
    stats = load.stats
    record(f"load {name}", json.dumps(stats.summary()))
    print(f"load during {name}: {stats.summary()}")
    assert not stats.cut_short, "the load loop hit its bound before the deploy ended"
    assert stats.requests >= 50, stats.summary()  # it really ran through the deploy
    assert stats.errors == 0, stats.first_error
    assert set(stats.statuses) == {"200"}, stats.summary()
    assert set(stats.versions) == versions, stats.summary()


# -- the story --------------------------------------------------------------------------------


def test_v1_fresh_deploy_serves_on_blue(story: Story) -> None:
    outcome = story.deploy("v1")
    assert outcome.result == "deployed", (outcome.message, _failures(outcome))
    assert (outcome.color, outcome.previous) == ("blue", None)
    assert outcome.message == "v1 serves on blue"
    assert list(outcome.phases) == ["inspect", "install", "database", "post_install", "start",
                                    "switch", "finish"]
    assert 0 < outcome.gate_seconds < sum(outcome.phases.values())
    assert story.versions() == {"web-1": "v1", "web-2": "v1"}
    for h in story.web:
        health = http.request(f"http://{h.address}/health")
        assert health.status == 200 and health.json()["status"] == "ok", health.describe()
        host = story.infra(h.name)
        assert story.link(h.name, "current") == f"/srv/{APP}/releases/v1"
        assert story.link(h.name, "blue") == f"/srv/{APP}/releases/v1"
        assert not host.file(f"/srv/{APP}/green").exists
        assert story.program(h.name, "blue") == "RUNNING"
        assert not host.file(f"/etc/supervisor/conf.d/{APP}-green.conf").exists
        assert host.file(f"/etc/nginx/deploykit/{APP}.active").content_string == "blue\n"
        assert not host.file("/etc/nginx/sites-enabled/default").exists
        env = host.file(host.file(f"/srv/{APP}/releases/v1/.env").linked_to)
        assert env.path.startswith(f"/srv/{APP}/env/v1-"), env.path  # the release's own
        assert (env.mode, env.user, env.group) == (0o600, "www-data", "www-data")
    with pg.connect(story.ssh("db-1"), APP) as db:
        columns = [r[0] for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'items' "
            "ORDER BY ordinal_position")]
    assert columns and "note" not in columns  # v1 ships migration 0001 only


def test_v1_to_v2_switches_without_a_failed_request(
        story: Story, record_property: Callable[[str, object], None]) -> None:
    with story.load() as load:
        outcome = story.deploy("v2")
    assert outcome.result == "deployed", outcome.message
    _served(record_property, "v1 -> v2", load, {"v1", "v2"})  # both, nothing else
    assert (outcome.color, outcome.previous) == ("green", "blue")
    assert outcome.message == "v2 serves on green; blue stopped"
    assert list(outcome.phases) == ["inspect", "install", "database", "post_install", "start",
                                    "switch", "finish", "stop_old"]
    assert list(outcome.waits) == ["database", "start", "switch"]  # gates, verification
    assert all(0 < outcome.waits[p] < outcome.phases[p] for p in outcome.waits), \
        (outcome.waits, outcome.phases)  # wall time: hosts wait in parallel
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}

    with pg.connect(story.ssh("db-1"), APP) as db:
        note = db.execute("SELECT data_type, column_default FROM information_schema.columns "
                          "WHERE table_name = 'items' AND column_name = 'note'").fetchall()
    assert len(note) == 1 and note[0][0] == "text", note

    web1, web2 = story.web
    created = http.request(f"http://{web1.address}/api/items", method="POST",
                           headers={"Content-Type": "application/json"},
                           body=json.dumps({"name": "widget", "note": "blue/green"}).encode())
    assert created.status == 201, created.describe()
    item_id = created.json()["id"]
    fetched = http.request(f"http://{web2.address}/api/items/{item_id}")  # the other host
    assert fetched.status == 200, fetched.describe()
    assert (fetched.json()["name"], fetched.json()["note"]) == ("widget", "blue/green")
    assert http.request(f"http://{web2.address}/api/items/999999").status == 404

    for h in story.web:
        assert story.program(h.name, "green") == "RUNNING"
        assert story.program(h.name, "blue") == "STOPPED"  # after the grace period
        assert story.link(h.name, "current") == f"/srv/{APP}/releases/v2"
        assert story.link(h.name, "green") == f"/srv/{APP}/releases/v2"
        assert story.link(h.name, "blue") == f"/srv/{APP}/releases/v1"
        marker = story.infra(h.name).file(f"/etc/nginx/deploykit/{APP}.active")
        assert marker.content_string == "green\n"


def test_the_same_deploy_again_changes_nothing(story: Story) -> None:
    outcome = story.deploy("v2")
    assert outcome.result == "unchanged", outcome.message
    assert (outcome.color, outcome.previous) == ("green", "green")
    assert outcome.message == "v2 already serves on green"
    results = [r for entry in outcome.report.hosts.values() for r in entry.results]
    assert results and all(r.status.value == "ok" for r in results), \
        [(r.task, r.status.value, r.message) for r in results if r.status.value != "ok"]
    assert {h.name for h in story.web} <= {h for h, log in outcome.logs.items() if log}
    assert _writes(outcome) == []
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}


def test_v3_broken_fails_at_the_health_gate_and_traffic_never_moves(
        story: Story, record_property: Callable[[str, object], None]) -> None:
    nginx_before = story.nginx_state()
    with story.load() as load:
        outcome = story.deploy("v3-broken")
    assert outcome.result == "failed", outcome.message
    _served(record_property, "v3-broken", load, {"v2"})
    assert (outcome.color, outcome.previous) == ("green", "green")
    assert outcome.message == ("v3-broken failed before the switch on blue: 'health gate: "
                               "blue /health' failed on web-1, web-2; traffic stays on green")
    assert "switch" not in outcome.phases  # stopped before the switch
    failures = _failures(outcome)
    assert set(failures) == {"web-1", "web-2"}
    for results in failures.values():
        (gate,) = results
        assert gate.task == "health gate: blue /health"
        assert "status 503" in gate.message and "item_tags" in gate.message, gate.message
    assert story.nginx_state() == nginx_before  # byte for byte
    for h in story.web:
        assert outcome.report.hosts[h.name].undone  # the idle colour was put back
        assert not story.infra(h.name).file(f"/srv/{APP}/releases/v3-broken").exists
        assert story.link(h.name, "blue") == f"/srv/{APP}/releases/v1"
        assert story.program(h.name, "blue") == "STOPPED"
        assert story.program(h.name, "green") == "RUNNING"
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}


def test_v4_slow_fails_verification_and_is_switched_back(
        story: Story, record_property: Callable[[str, object], None]) -> None:
    nginx_before = story.nginx_state()
    with story.load() as load:
        outcome = story.deploy("v4-slow")
    assert outcome.result == "rolled_back", outcome.message
    # traffic did move to v4-slow (verified through nginx), and came back without an error
    _served(record_property, "v4-slow", load, {"v2", "v4-slow"})
    assert (outcome.color, outcome.previous) == ("green", "green")
    assert outcome.message == ("v4-slow failed the switch to blue: 'verify: latency through "
                               "nginx' failed on web-1, web-2; traffic switched back to green")
    failures = _failures(outcome)
    assert set(failures) == {"web-1", "web-2"}
    for results in failures.values():
        (slow,) = results
        assert slow.task == "verify: latency through nginx"
        assert "p95" in slow.message, slow.message
    for h in story.web:
        undone = outcome.report.hosts[h.name].undone
        assert any(f"/etc/nginx/conf.d/{APP}_upstream.conf" in u for u in undone), undone
        assert outcome.report.hosts[h.name].undo_failed == []
        assert story.program(h.name, "blue") == "STOPPED"
        assert story.program(h.name, "green") == "RUNNING"
        marked = story.infra(h.name).file(f"/srv/{APP}/releases/v4-slow/.failed")
        assert marked.content_string.startswith("blue/green deploy failed\n")
    assert story.nginx_state() == nginx_before  # the switch-back restored every byte
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}


def test_v5_crash_never_runs_and_says_why(
        story: Story, record_property: Callable[[str, object], None]) -> None:
    nginx_before = story.nginx_state()
    with story.load() as load:
        outcome = story.deploy("v5-crash")
    assert outcome.result == "failed", outcome.message
    _served(record_property, "v5-crash", load, {"v2"})
    assert (outcome.color, outcome.previous) == ("green", "green")
    assert outcome.message == ("v5-crash failed before the switch on blue: 'program "
                               "sampleapp-blue' failed on web-1, web-2; traffic stays on green")
    assert "switch" not in outcome.phases
    failures = _failures(outcome)
    assert set(failures) == {"web-1", "web-2"}
    for results in failures.values():
        (start,) = results
        assert start.task == f"program {APP}-blue"
        assert "FATAL" in start.message or "BACKOFF" in start.message, start.message
        # the end of the program's log: gunicorn's own report of the crash
        assert "startup self-check failed" in start.message, start.message
    assert story.nginx_state() == nginx_before
    for h in story.web:
        assert not story.infra(h.name).file(f"/srv/{APP}/releases/v5-crash").exists
        assert story.program(h.name, "blue") == "STOPPED"
        assert story.program(h.name, "green") == "RUNNING"
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}


def test_releases_rollback_moves_current_back_after_the_deploys(story: Story) -> None:
    rollback = [releases.rollback(APP, from_release="v2")]
    first = Runner(rollback)
    report = first.run(story.web)
    assert report.ok, report.to_json()
    again = Runner(rollback)
    second = again.run(story.web)
    for h in story.web:
        assert [r.status.value for r in report.hosts[h.name].results] == ["changed"]
        assert [r.status.value for r in second.hosts[h.name].results] == ["ok"]
        assert [c.command for c in again.logs[h.name] if c.write] == []
        assert story.link(h.name, "current") == f"/srv/{APP}/releases/v1"
        marked = story.infra(h.name).file(f"/srv/{APP}/releases/v2/.failed")
        assert marked.content_string.startswith("rolled back to v1\n")
        assert story.link(h.name, "green") == f"/srv/{APP}/releases/v2"  # colours untouched
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}


def test_a_server_name_nginx_would_reject_is_refused_before_anything(story: Story) -> None:
    # a regex server name ("(" unclosed) is refused by deploykit itself, before any host is
    # touched (nginx -t rejecting a config is the next test's broken include)
    nginx_before = story.nginx_state()
    with pytest.raises(ConfigError, match=r"server_name: invalid server_name '~\^\(www'"):
        story.plan("v1", database=None, server_name="~^(www")
    assert story.nginx_state() == nginx_before
    for h in story.web:
        assert story.infra(h.name).run("nginx -t").rc == 0


def test_a_broken_nginx_config_on_the_host_fails_the_switch_and_changes_nothing(
        story: Story, record_property: Callable[[str, object], None]) -> None:
    for h in story.web:
        story.lab.nsenter(h.name, ["sh", "-c", f"echo 'not_a_directive on;' > {BROKEN_INCLUDE}"])
    try:
        nginx_before = story.nginx_state()
        with story.load() as load:
            outcome = bluegreen.deploy(story.plan("v1", database=None), story.web, story.db,
                                       deploy_id="test-bg-broken-host")
        assert outcome.result == "rolled_back", outcome.message
        _served(record_property, "broken nginx", load, {"v2"})
        assert outcome.message == ("v1 failed the switch to blue: 'nginx: traffic to blue' "
                                   "failed on web-1, web-2; traffic switched back to green")
        assert outcome.color == "green"
        failures = _failures(outcome)
        assert set(failures) == {"web-1", "web-2"}
        for results in failures.values():
            (switch,) = results
            assert switch.task == "nginx: traffic to blue"
            assert "nginx -t fails before any change, nothing written" in switch.message
            assert f'unknown directive "not_a_directive" in {BROKEN_INCLUDE}:1' \
                in switch.message, switch.message
        assert story.nginx_state() == nginx_before
        for h in story.web:
            marker = story.infra(h.name).file(f"/etc/nginx/deploykit/{APP}.active")
            assert marker.content_string == "green\n"
            assert story.program(h.name, "blue") == "STOPPED"
            assert not story.infra(h.name).file(f"/srv/{APP}/releases/v1/.failed").exists
    finally:
        for h in story.web:
            story.lab.nsenter(h.name, ["rm", "-f", BROKEN_INCLUDE])
    for h in story.web:
        assert story.infra(h.name).run("nginx -t").rc == 0
    assert story.versions() == {"web-1": "v2", "web-2": "v2"}
