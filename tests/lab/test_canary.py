"""Canary deploys on the lab: real nginx weighting real gunicorn colours on web-1 and
web-2, judged from nginx's own access log, with real requests from a bounded load
loop (the ``traffic`` hook: every analysis window gets ``WINDOW`` seconds of it).

The module keeps one deployment across its tests (the lab is reset at the end):
each test first makes sure the stable release it starts from is live (a blue/green
deploy, ``unchanged`` when it already is), so the tests run alone too, and fast in
a row (v1 -> v2 promoted, v2 -> v4-slow rolled back, ...).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploykit.artifacts import Artifact, build
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.result import Result
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen, canary
from deploykit.strategies.analysis import AccessLog, LogWindow, Thresholds, access_log
from deploykit.strategies.bluegreen import BlueGreen, other
from deploykit.task import UndoStack
from deploykit.tasks import http, nginx, releases, services
from deploykit.testing.lab import Lab
from deploykit.testing.sample import app_env

APP = "sampleapp"
WINDOW = 2.0
VERSIONS = ("v1", "v2", "v4-slow")
UPSTREAM = f"/etc/nginx/conf.d/{APP}_upstream.conf"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("artifacts")
    return {v: build(project_root / "examples" / "app", app=APP, version=v, out_dir=out,
                     wheelhouse=project_root / ".cache" / "wheelhouse") for v in VERSIONS}


class Load:
    """A bounded load loop through every web host's nginx (GET /version, 3 at a time)."""

    def __init__(self, web: list[Host], *, concurrency: int = 3,
                 requests_per_window: int | None = None) -> None:
        self.urls = [f"http://{h.address}/version" for h in web]
        self.concurrency = concurrency
        self.per_window = requests_per_window
        self.measurements: list[http.Measurement] = []

    def __call__(self, seconds: float) -> None:
        def one(url: str) -> None:
            m = http.measure(url, n=self.per_window or 100_000, concurrency=self.concurrency,
                             max_duration=seconds, timeout=5.0)
            self.measurements.append(m)

        threads = [threading.Thread(target=one, args=(u,)) for u in self.urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.measurements)

    @property
    def errors(self) -> int:
        return sum(m.errors for m in self.measurements)


@dataclass
class Fleet:
    """The lab's web hosts, the db host, the .env, and connections for assertions."""

    web: list[Host]
    db: Host
    env: Secret
    built: dict[str, Artifact]
    connect: Callable[[str], Connection]
    runs: list[str] = field(default_factory=list)
    live: set[str] = field(default_factory=set)  # versions that were live (schema reached)

    def release(self, version: str) -> BlueGreen:
        # v1 goes out as a canary on v2's schema (0002 is additive): no migration phase,
        # which would refuse a database newer than the artifact
        database = None if version == "v1" and "v2" in self.live else APP
        return BlueGreen(APP, self.built[version], self.env, database=database,
                         grace_seconds=0.5, health_interval=0.2)

    def plan(self, version: str, **options: object) -> canary.Canary:
        options.setdefault("window", WINDOW)
        options.setdefault("thresholds", Thresholds(min_requests=8, p95_slack_ms=150))
        return canary.Canary(self.release(version), **options)  # type: ignore[arg-type]

    def run_id(self, what: str) -> str:
        self.runs.append(what)
        return f"test-canary-{len(self.runs)}-{what}"

    def stable(self, version: str) -> str:
        """Make ``version`` the live release (blue/green); its colour."""
        out = bluegreen.deploy(self.release(version), self.web, self.db,
                               deploy_id=self.run_id(f"stable-{version}"))
        assert out.ok, out.message
        assert out.color is not None
        self.live.add(version)
        return out.color

    def upstream(self, host: str) -> list[nginx.UpstreamLine]:
        text = self.connect(host).run(["cat", UPSTREAM], write=False).stdout
        return nginx.parse_upstream(text, APP)

    def versions(self, n: int = 6) -> set[str]:
        """The versions nginx answers with on every web host, over ``n`` requests each."""
        seen = set()
        for host in self.web:
            for _ in range(n):
                response = http.request(f"http://{host.address}/version")
                assert response.status == 200, response.describe()
                seen.add(response.json()["version"])
        return seen

    def release_info(self, host: str, release_id: str) -> releases.ReleaseInfo:
        infos = releases.list_releases(self.connect(host), APP)
        return next(i for i in infos if i.release_id == release_id)

    def program_state(self, host: str, color: str) -> str:
        return services.status(self.connect(host), f"{APP}-{color}").state


@pytest.fixture(scope="module")
def fleet(lab: Lab, lab_inventory: Inventory, built: dict[str, Artifact],
          lab_connection: Callable[[str], Connection]) -> Iterator[Fleet]:
    db = lab_inventory.host("db-1")
    env = app_env(db, APP)
    conns: dict[str, Connection] = {}

    def connect(name: str) -> Connection:
        if name not in conns:
            conns[name] = lab_connection(name)
        return conns[name]

    yield Fleet(lab_inventory.select("web"), db, env, built, connect)
    lab.reset()


def analysis_results(out: canary.CanaryOutcome, host: str) -> list[Result]:
    return [r for r in out.report.hosts[host].results if r.task.startswith("canary: analysis")]


def read_results(out: canary.CanaryOutcome) -> list[Result]:
    return [r for h in out.report.hosts.values() for r in h.results
            if r.task.startswith("canary: read access log")]


# -- plans ---------------------------------------------------------------------------------


def test_plan_validation(built: dict[str, Artifact]) -> None:
    release = BlueGreen(APP, built["v2"], "X=1\n")
    assert canary.Canary(release).steps == (5, 25, 50, 100)
    assert canary.Canary(release, steps=[10, 100]).steps == (10, 100)
    for steps in ((), (5, 5, 100), (50, 25), (0, 100), (5, 101), (5.5, 100)):
        with pytest.raises(ConfigError, match="canary steps must"):
            canary.Canary(release, steps=steps)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window"):
        canary.Canary(release, window=0)
    with pytest.raises(ConfigError, match="on_inconclusive"):
        canary.Canary(release, on_inconclusive="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pause=30: not one of the steps"):
        canary.deploy(canary.Canary(release), [], deploy_id="x", pause=30)


# -- on the lab ----------------------------------------------------------------------------


def test_a_good_canary_is_promoted_through_every_step(fleet: Fleet) -> None:
    stable = fleet.stable("v1")
    new = other(stable)
    load = Load(fleet.web)
    out = canary.deploy(fleet.plan("v2"), fleet.web, fleet.db, deploy_id=fleet.run_id("v2"),
                        traffic=load)

    assert out.result == "deployed", out.message
    assert (out.color, out.previous, out.step) == (new, stable, 100)
    assert out.message == f"v2 promoted to {new}; {stable} stopped"
    assert [s.weight for s in out.steps] == [5, 25, 50, 100]
    for s in out.steps:
        assert s.verdict.status == "pass", s.summary()
        assert s.windows == 1 and s.seconds >= WINDOW
        assert s.comparison.canary.requests >= 8 and s.comparison.canary.errors == 0
        assert s.comparison.other_attempts == 0 and s.malformed == 0
        assert s.lines == s.comparison.canary.requests + s.comparison.stable.requests
        assert s.read_seconds < 1.0 and s.bytes > 0
    shares = [s.comparison.canary.requests / s.lines for s in out.steps]
    assert 0.01 < shares[0] < 0.12 and 0.15 < shares[1] < 0.35 and 0.38 < shares[2] < 0.62
    assert shares[3] == 1.0  # at 100 % the stable colour is down: nothing to compare
    assert [c.skipped for c in out.steps[3].verdict.checks] == [False, False, True, True]

    # every step's figures are in the report, per host, with the host's own figures
    for host in ("web-1", "web-2"):
        results = analysis_results(out, host)
        assert [r.data["weight"] for r in results] == [5, 25, 50, 100]
        assert all(r.status.value == "ok" and r.data["verdict"]["status"] == "pass"
                   for r in results)
        assert list(results[0].data["hosts"]) == [host]
        assert results[0].data["hosts"][host]["canary"]["requests"] > 0
        assert results[0].data["canary"] == out.steps[0].comparison.canary.as_dict()
    # one read-only round trip per host per window
    reads = read_results(out)
    assert len(reads) == 2 * 4
    assert all(r.data["commands"] == 1 and r.data["lines"] > 0 for r in reads)

    assert load.errors == 0 and load.requests > 100
    for host in ("web-1", "web-2"):
        assert nginx.active_color(fleet.connect(host), APP) == new
        assert [(s.address, s.params) for s in fleet.upstream(host)] == [
            (f"127.0.0.1:{fleet.release('v2').ports[new]}", [])]
        assert fleet.program_state(host, stable) == "STOPPED"
        infos = releases.list_releases(fleet.connect(host), APP)
        assert {i.release_id for i in infos if "current" in i.links} == {"v2"}
    assert fleet.versions() == {"v2"}


def test_a_slow_canary_is_rolled_back_at_the_first_step(fleet: Fleet) -> None:
    stable = fleet.stable("v2")
    slow = other(stable)
    load = Load(fleet.web)
    out = canary.deploy(fleet.plan("v4-slow", thresholds=Thresholds(min_requests=5)),
                        fleet.web, fleet.db, deploy_id=fleet.run_id("v4-slow"), traffic=load)

    assert out.result == "rolled_back", out.message
    assert (out.color, out.previous, out.step) == (stable, stable, 5)
    assert len(out.steps) == 1
    step = out.steps[0]
    assert step.verdict.status == "fail"
    assert step.comparison.canary.p95_ms is not None and step.comparison.canary.p95_ms >= 1000
    assert step.comparison.stable.p95_ms is not None and step.comparison.stable.p95_ms < 500
    assert any(r.startswith(f"canary p95 {step.comparison.canary.p95_ms:.0f} ms, at most 500 ms")
               for r in step.verdict.reasons)
    assert out.message.startswith("v4-slow rolled back: analysis failed at 5 %: canary p95 ")
    assert out.message.endswith(f"traffic on {stable}, {slow} stopped")
    for host in ("web-1", "web-2"):
        [result] = analysis_results(out, host)
        assert result.failed and result.data["canary"]["p95_ms"] >= 1000
        assert nginx.active_color(fleet.connect(host), APP) == stable
        assert [s.address for s in fleet.upstream(host)] == [
            f"127.0.0.1:{fleet.release('v2').ports[stable]}"]
        assert fleet.program_state(host, slow) == "STOPPED"
        assert fleet.program_state(host, stable) == "RUNNING"
        info = fleet.release_info(host, "v4-slow")
        assert info.failed and info.reason.startswith("canary failed at 5 %")
    assert fleet.versions() == {"v2"}


def test_too_few_requests_never_promote(fleet: Fleet) -> None:
    stable = fleet.stable("v2")
    trickle = Load(fleet.web, concurrency=1, requests_per_window=3)
    plan = fleet.plan("v1", steps=(50, 100), window=1.0, max_extensions=1,
                      thresholds=Thresholds(min_requests=20))
    out = canary.deploy(plan, fleet.web, fleet.db, deploy_id=fleet.run_id("v1-few"),
                        traffic=trickle)

    assert out.result == "rolled_back", out.message
    assert out.step == 50
    [step] = out.steps
    assert step.windows == 2  # the window was extended once, then given up on
    assert step.verdict.status == "inconclusive"
    assert 0 < step.comparison.canary.requests < 20
    assert step.lines == trickle.requests == 2 * 2 * 3
    assert step.verdict.reasons == (
        f"canary served {step.comparison.canary.requests} requests, fewer than "
        "min_requests=20: not judged",)
    assert out.message.startswith("v1 rolled back: no verdict at 50 %: canary served")
    for host in ("web-1", "web-2"):
        [result] = analysis_results(out, host)
        assert result.failed and result.data["verdict"]["status"] == "inconclusive"
        assert nginx.active_color(fleet.connect(host), APP) == stable
        assert fleet.program_state(host, other(stable)) == "STOPPED"
        assert not fleet.release_info(host, "v1").failed  # no evidence against it
    assert fleet.versions() == {"v2"}


def test_pause_then_promote_one_step_then_abort(fleet: Fleet) -> None:
    stable = fleet.stable("v2")
    new = other(stable)
    plan = fleet.plan("v1")
    load = Load(fleet.web)
    out = canary.deploy(plan, fleet.web, fleet.db, deploy_id=fleet.run_id("v1-pause"),
                        pause=True, traffic=load)
    assert out.result == "paused", out.message
    assert (out.step, [s.weight for s in out.steps]) == (5, [5])
    assert out.ok and out.color == stable
    port = fleet.release("v1").ports
    for host in ("web-1", "web-2"):
        assert [(s.address, s.params) for s in fleet.upstream(host)] == [
            (f"127.0.0.1:{port[stable]}", ["weight=95"]), (f"127.0.0.1:{port[new]}", ["weight=5"])]
    assert fleet.versions(20) == {"v1", "v2"} or fleet.versions(40) == {"v1", "v2"}

    more = canary.promote(plan, fleet.web, deploy_id=fleet.run_id("v1-promote"), pause=True,
                          traffic=load)
    assert more.result == "paused", more.message
    assert (more.step, [s.weight for s in more.steps]) == (25, [25])
    assert more.steps[0].verdict.passed
    for host in ("web-1", "web-2"):
        assert [s.params for s in fleet.upstream(host)] == [["weight=75"], ["weight=25"]]

    wrong = canary.promote(fleet.plan("v4-slow"), fleet.web, deploy_id=fleet.run_id("wrong"))
    assert wrong.result == "failed"
    assert wrong.message.endswith(f"the {new} colour runs v1, not v4-slow: no canary of it to "
                                  "continue")

    aborted = canary.abort(plan, fleet.web, deploy_id=fleet.run_id("v1-abort"))
    assert aborted.result == "rolled_back", aborted.message
    assert aborted.step == 25
    assert aborted.message == (f"v1 rolled back: aborted by the operator; traffic on {stable}, "
                               f"{new} stopped")
    for host in ("web-1", "web-2"):
        assert [s.address for s in fleet.upstream(host)] == [f"127.0.0.1:{port[stable]}"]
        assert fleet.program_state(host, new) == "STOPPED"
        assert not fleet.release_info(host, "v1").failed
    assert fleet.versions() == {"v2"}
    assert load.errors == 0

    again = canary.abort(plan, fleet.web, deploy_id=fleet.run_id("v1-abort-again"))
    assert again.result == "rolled_back" and again.step is None
    assert all(r.status.value == "ok" for h in again.report.hosts.values() for r in h.results)


def test_check_mode_changes_nothing(fleet: Fleet) -> None:
    stable = fleet.stable("v2")
    before = {h.name: fleet.connect(h.name).run(["cat", UPSTREAM], write=False).stdout
              for h in fleet.web}
    out = canary.deploy(fleet.plan("v1"), fleet.web, fleet.db, deploy_id=fleet.run_id("check"),
                        check=True)
    assert out.result == "checked", out.message
    assert out.message == (f"would deploy v1 to {other(stable)} and shift traffic from "
                           f"{stable} in steps of 5, 25, 50, 100 %")
    assert out.steps == []
    for host in fleet.web:
        assert fleet.connect(host.name).run(["cat", UPSTREAM], write=False).stdout \
            == before[host.name]
        weights = [r for r in out.report.hosts[host.name].results
                   if r.task.startswith("nginx: ")]
        assert weights and weights[0].changed and "weight=5" in weights[0].diff


def test_a_canary_needs_a_stable_release(fleet: Fleet) -> None:
    fresh = BlueGreen("otherapp", fleet.built["v2"], fleet.env)
    out = canary.deploy(canary.Canary(fresh), fleet.web, deploy_id=fleet.run_id("nostable"))
    assert out.result == "failed"
    assert out.message == ("no colour of otherapp serves traffic: a canary needs a stable "
                           "release beside it (deploy the first one with bluegreen.deploy)")
    assert all(not h.results for h in out.report.hosts.values())


def test_access_log_task_and_window_reads_over_ssh(fleet: Fleet) -> None:
    fleet.stable("v2")
    conn = fleet.connect("web-1")
    default = AccessLog()
    custom = AccessLog(path="/var/log/nginx/dk-test-upstream.log")
    before = conn.run(["cat", default.conf_file], write=False, check=False).stdout

    checked = access_log(custom).run(conn, check=True)
    assert checked.changed and "+access_log /var/log/nginx/dk-test-upstream.log" in checked.diff
    assert conn.run(["cat", default.conf_file], write=False, check=False).stdout == before

    undo = UndoStack()
    first = access_log(custom).run(conn, undo=undo)
    assert first.changed, first.message
    assert conn.run(["cat", custom.conf_file], write=False).stdout == custom.render()
    sent = len(conn.log)
    second = access_log(custom).run(conn)
    assert second.status.value == "ok"
    assert [c for c in conn.log[sent:] if c.write] == []

    # what real nginx writes, read back through a window: one read-only command per read
    window = LogWindow(custom)
    sent = len(conn.log)
    window.start(conn)
    for _ in range(5):
        assert http.request(f"http://{fleet.web[0].address}/version?x=%22q").status == 200
    data = window.advance(conn)
    reads = conn.log[sent:]
    assert len(reads) == 2 and not any(c.write for c in reads)
    assert data["lines"] == 5
    [records] = window.records.values()
    port = fleet.release("v2").ports[stable_color(fleet)]
    assert {(r.status, r.uri, r.upstream, r.attempts[0].address) for r in records} == {
        (200, "/version", f"{APP}_upstream", f"127.0.0.1:{port}")}
    assert all(r.request_ms < 1000 and r.time for r in records)
    assert window.advance(conn)["lines"] == 0

    undo.unwind(conn)
    assert conn.run(["cat", default.conf_file], write=False, check=False).stdout == before


def stable_color(fleet: Fleet) -> str:
    color = nginx.active_color(fleet.connect("web-1"), APP)
    assert color is not None
    return color


def test_a_canary_that_stops_answering_is_rolled_back_by_its_error_rate(
        fleet: Fleet, lab: Lab) -> None:
    """The canary's program is stopped as the window opens (a real fault): nginx gets
    connection refused from it (its own 502 per attempt) and retries on the stable
    colour, so clients see no error; the canary's attempts are all 5xx."""
    stable = fleet.stable("v2")
    new = other(stable)
    load = Load(fleet.web)

    def traffic(seconds: float) -> None:
        for host in fleet.web:
            lab.nsenter(host.name, ["supervisorctl", "-c", "/etc/supervisor/supervisord.conf",
                                    "stop", f"{APP}-{new}"])
        load(seconds)

    plan = fleet.plan("v1", thresholds=Thresholds(min_requests=1))
    out = canary.deploy(plan, fleet.web, fleet.db, deploy_id=fleet.run_id("v1-dies"),
                        traffic=traffic)

    assert out.result == "rolled_back", out.message
    [step] = out.steps
    c = step.comparison.canary
    assert c.requests >= 1 and c.errors == c.requests
    assert c.statuses == {"502": c.requests}
    assert step.verdict.reasons[0] == "canary 5xx 100.00%, at most 1.00%"
    assert step.comparison.stable.errors == 0
    assert load.errors == 0  # every refused attempt was retried on the stable colour
    for host in ("web-1", "web-2"):
        assert nginx.active_color(fleet.connect(host), APP) == stable
        assert fleet.release_info(host, "v1").failed
    assert fleet.versions() == {"v2"}
