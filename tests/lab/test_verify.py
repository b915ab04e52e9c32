"""testinfra suites on the lab: ``pytest --inventory``, ``verify`` and the deploy gates.

One story over the sample app's example suite (``examples/verify``), in file
order: v1 deployed blue/green with the suite as its gate (both gates pass, their
JUnit XML lists every host x test); the suite run by plain ``pytest --inventory
<lab.yml> --hosts web``, reading what to verify from the hosts; :func:`verify`
over the web hosts with one host's ``.env`` broken (per-host table, JUnit XML,
run report); v2 with a test hook that makes the new release world-writable
after the switch (switched back on every host), then before it (traffic never
moves), then after a canary's promotion (rolled back); and a known_hosts
without the hosts' keys (refused, no traceback).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra.host
import yaml
from rich.console import Console

from deploykit import pg, verify
from deploykit.artifacts import Artifact, build
from deploykit.connection import Connection
from deploykit.inventory import Host, Inventory
from deploykit.result import RunReport
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen, canary
from deploykit.strategies.analysis import Thresholds
from deploykit.strategies.bluegreen import BlueGreen, DeployOutcome
from deploykit.tasks import http, releases
from deploykit.testing.lab import Lab
from deploykit.testing.sample import app_env

pytestmark = pytest.mark.lab

APP = "sampleapp"
WEB = ("web-1", "web-2")
SUPERVISORCTL = ("supervisorctl", "/etc/supervisor/supervisord.conf")
PRE = {"test_program_runs_under_supervisor", "test_port_listening",
       "test_release_is_the_deployed_version", "test_env_file_is_private_to_the_app_user",
       "test_nginx_config_is_valid", "test_database_reachable_and_migrated",
       "test_no_world_writable_files_in_the_release"}
ALL = PRE | {"test_current_points_at_the_release", "test_nginx_sends_traffic_to_the_colour"}
# a test hook: in the given phase, the release being verified gets a world-writable file
BREAK_HOOK = '''
import pytest

@pytest.fixture(scope="module", autouse=True)
def break_the_release(host, deploy_context):
    if deploy_context.phase == {phase!r}:
        release = f"/srv/{{deploy_context.app}}/releases/{{deploy_context.release}}"
        assert host.run("chmod o+w %s", release + "/VERSION").rc == 0
'''


@dataclass
class Story:
    lab: Lab
    inventory_file: Path
    web: list[Host]
    db: Host
    artifacts: dict[str, Artifact]
    env: Secret
    ssh: Callable[[str], Connection]
    infra: Callable[[str], testinfra.host.Host]
    work: Path
    suite: Path
    outcomes: list[DeployOutcome] = field(default_factory=list)

    def plan(self, version: str, suite: Path | None = None) -> BlueGreen:
        return BlueGreen(APP, self.artifacts[version], self.env, database=APP,
                         verify_suite=str(suite or self.suite),
                         verify_report_dir=str(self.work / "runs"), grace_seconds=0.5)

    def deploy(self, version: str, suite: Path | None = None) -> DeployOutcome:
        outcome = bluegreen.deploy(self.plan(version, suite), self.web, self.db,
                                   deploy_id=f"test-verify-{len(self.outcomes) + 1}-{version}")
        self.outcomes.append(outcome)
        return outcome

    def versions(self) -> dict[str, str]:
        return {h.name: http.request(f"http://{h.address}/version").json()["version"]
                for h in self.web}

    def broken_suite(self, phase: str) -> Path:
        """The example suite plus a hook breaking the release in ``phase``."""
        suite = self.work / f"suite-{phase}"
        if suite.exists():
            return suite
        shutil.copytree(self.suite, suite, ignore=shutil.ignore_patterns("__pycache__"))
        (suite / "conftest.py").write_text(BREAK_HOOK.format(phase=phase))
        return suite

    def pytest(self, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``pytest --inventory`` as a user runs it (a subprocess)."""
        return subprocess.run(
            [sys.executable, "-m", "pytest", str(self.suite), "-p", "no:cacheprovider",
             "--inventory", str(inventory or self.inventory_file), *args],
            capture_output=True, text=True, timeout=300, check=False)


def junit_cases(path: Path) -> dict[tuple[str, str], str]:
    """(test, host) -> ``passed``/``failed``/``error``/``skipped``, from a JUnit file."""
    cases: dict[tuple[str, str], str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        found = re.fullmatch(r"(\w+)\[deploykit://([\w-]+)\]", case.get("name", ""))
        assert found is not None, case.get("name")
        name, host = found.groups()
        prop = case.find("properties/property[@name='host']")
        assert prop is not None and prop.get("value") == host
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "")
        cases[(name, host)] = {"failure": "failed", "": "passed"}.get(outcome, outcome)
    return cases


def _drop_database(ssh: Callable[[str], Connection]) -> None:
    with pg.connect(ssh("db-1")) as db:
        db.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")


@pytest.fixture(scope="module")
def story(lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
          lab_host: Callable[[str], testinfra.host.Host],
          tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Iterator[Story]:
    work = tmp_path_factory.mktemp("verify")
    artifacts = {v: build(project_root / "examples" / "app", app=APP, version=v,
                          out_dir=work / "artifacts",
                          wheelhouse=project_root / ".cache" / "wheelhouse")
                 for v in ("v1", "v2")}
    inventory_file = work / "lab.yml"
    inventory_file.write_text(yaml.safe_dump(lab.inventory(), sort_keys=False))
    db = lab_inventory.host("db-1")
    lab.reset()
    _drop_database(lab_connection)
    try:
        yield Story(lab, inventory_file, lab_inventory.select("web"), db, artifacts,
                    app_env(db, APP), lab_connection, lab_host, work,
                    project_root / "examples" / "verify")
    finally:
        lab.reset()
        _drop_database(lab_connection)


def test_a_gated_deploy_runs_both_gates(story: Story) -> None:
    outcome = story.deploy("v1")
    assert outcome.result == "deployed", outcome.message
    assert story.versions() == {"web-1": "v1", "web-2": "v1"}
    pre, post = outcome.verifications["pre_switch"], outcome.verifications["post_switch"]
    assert pre.ok and post.ok, (pre.summary(), post.summary())
    assert list(pre.hosts) == list(post.hosts) == list(WEB)
    base = story.work / "runs" / outcome.report.run_id
    assert pre.junit_path == Path(f"{base}.pre_switch.junit.xml")
    assert post.junit_path == Path(f"{base}.post_switch.junit.xml")
    assert junit_cases(Path(f"{base}.pre_switch.junit.xml")) == {
        (t, h): "passed" for t in PRE for h in WEB}
    assert junit_cases(Path(f"{base}.post_switch.junit.xml")) == {
        (t, h): "passed" for t in ALL for h in WEB}
    gates = {(r.host, r.task): r for h in outcome.report.hosts.values() for r in h.results
             if r.task.startswith("verify: suite")}
    assert sorted(gates) == sorted((h, f"verify: suite {m} on blue") for h in WEB
                                   for m in ("pre_switch", "post_switch"))
    assert all(r.data["counts"]["passed"] == len(r.data["tests"]) for r in gates.values())


def test_pytest_inventory_hosts_web_runs_the_suite_on_every_web_host(story: Story) -> None:
    junit = story.work / "plain.xml"
    run = story.pytest("--hosts", "web", "--junitxml", str(junit))
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"{len(ALL) * 2} passed" in run.stdout
    assert junit_cases(junit) == {(t, h): "passed" for t in ALL for h in WEB}



def test_verify_reports_per_host_with_junit_and_run_report(story: Story) -> None:
    env = f"/srv/{APP}/current/.env"  # the live release's own environment file
    story.ssh("web-2").run(["chmod", "0644", env])
    try:
        result = verify.verify(story.inventory_file, "web", story.suite,
                               report_dir=story.work / "reports", run_id="verify-test")
    finally:
        story.ssh("web-2").run(["chmod", "0600", env])
    assert not result.ok
    assert result.failed_hosts == ["web-2"]
    assert result.hosts["web-1"].counts == {"passed": len(ALL), "failed": 0, "skipped": 0,
                                            "error": 0}
    [failed] = result.hosts["web-2"].failed_tests
    assert failed.name == "test_env_file_is_private_to_the_app_user"
    assert "0o644" in failed.message, failed.message

    reports = story.work / "reports"
    assert result.junit_path == reports / "verify-test.junit.xml"
    cases = junit_cases(reports / "verify-test.junit.xml")
    assert cases == {(t, h): "failed" if (t, h) == (failed.name, "web-2") else "passed"
                     for t in ALL for h in WEB}
    report = RunReport.from_dict(json.loads((reports / "verify-test.json").read_text()))
    assert {h: e.failed for h, e in report.hosts.items()} == {"web-1": False, "web-2": True}

    console = Console(width=200, record=True)
    console.print(result.table())
    rows = {cells[0]: cells[1:] for line in console.export_text().splitlines()
            if (cells := [c.strip() for c in line.strip("│┃ ").split("│")])[0] in WEB}
    assert rows["web-1"] == ["ok", str(len(ALL)), "0", "0", "-"], rows
    assert rows["web-2"] == ["FAILED", str(len(ALL) - 1), "1", "0", failed.name], rows


def test_a_post_switch_failure_switches_back(story: Story) -> None:
    outcome = story.deploy("v2", story.broken_suite("post_switch"))
    assert outcome.result == "rolled_back", outcome.message
    assert outcome.message == ("v2 failed the switch to green: 'verify: suite post_switch "
                               "on green' failed on web-1, web-2; traffic switched back to blue")
    assert outcome.verifications["pre_switch"].ok
    post = outcome.verifications["post_switch"]
    assert {h: [t.name for t in post.hosts[h].failed_tests] for h in WEB} == {
        h: ["test_no_world_writable_files_in_the_release"] for h in WEB}
    assert story.versions() == {"web-1": "v1", "web-2": "v1"}
    for h in WEB:
        infra = story.infra(h)
        assert infra.file(f"/etc/nginx/deploykit/{APP}.active").content_string == "blue\n"
        assert infra.file(f"/srv/{APP}/current").linked_to == f"/srv/{APP}/releases/v1"
        assert infra.supervisor(f"{APP}-green", *SUPERVISORCTL).status == "STOPPED"
        v2 = next(i for i in releases.list_releases(story.ssh(h), APP) if i.release_id == "v2")
        assert v2.failed


def test_a_pre_switch_failure_never_moves_traffic(story: Story) -> None:
    # v2 as it was installed (the hook's damage repaired, the failed mark removed): this
    # deploy installs nothing, it starts green and fails the pre-switch gate
    for web in story.web:
        conn = story.ssh(web.name)
        conn.run(["chmod", "o-w", f"/srv/{APP}/releases/v2/VERSION"])
        assert not releases.mark_ok(APP, "v2").run(conn).failed
    outcome = story.deploy("v2", story.broken_suite("pre_switch"))
    assert outcome.result == "failed", outcome.message
    assert outcome.message == ("v2 failed before the switch on green: 'verify: suite "
                               "pre_switch on green' failed on web-1, web-2; traffic stays "
                               "on blue")
    assert "switch" not in outcome.phases
    assert "post_switch" not in outcome.verifications
    assert story.versions() == {"web-1": "v1", "web-2": "v1"}
    pre = outcome.verifications["pre_switch"]
    for h in WEB:
        assert [t.name for t in pre.hosts[h].failed_tests] == [
            "test_no_world_writable_files_in_the_release"]
        infra = story.infra(h)
        assert infra.file(f"/etc/nginx/deploykit/{APP}.active").content_string == "blue\n"
        assert infra.file(f"/srv/{APP}/current").linked_to == f"/srv/{APP}/releases/v1"
        assert infra.supervisor(f"{APP}-green", *SUPERVISORCTL).status == "STOPPED"  # undone


def test_a_canary_failing_after_promotion_is_rolled_back(story: Story) -> None:
    for web in story.web:  # v2 as installed (the last test's hook repaired)
        story.ssh(web.name).run(["chmod", "o-w", f"/srv/{APP}/releases/v2/VERSION"])

    def traffic(seconds: float) -> None:
        for _ in range(3):
            story.versions()

    plan = canary.Canary(story.plan("v2", story.broken_suite("post_switch")), steps=(100,),
                         window=0.5, thresholds=Thresholds(min_requests=1))
    outcome = canary.deploy(plan, story.web, story.db, deploy_id="test-verify-canary",
                            traffic=traffic)
    assert outcome.result == "rolled_back", outcome.message
    assert outcome.message == ("v2 rolled back: post-switch verification failed: 'verify: "
                               "suite post_switch on green' failed on web-1, web-2; traffic "
                               "on blue, green stopped")
    gates = {(r.host, r.task, r.status.value) for h in outcome.report.hosts.values()
             for r in h.results if r.task.startswith("verify: suite")}
    assert gates == {(h, f"verify: suite {m} on green", status) for h in WEB
                     for m, status in (("pre_switch", "ok"), ("post_switch", "failed"))}
    assert story.versions() == {"web-1": "v1", "web-2": "v1"}
    for h in WEB:
        infra = story.infra(h)
        assert infra.file(f"/etc/nginx/deploykit/{APP}.active").content_string == "blue\n"
        assert infra.file(f"/srv/{APP}/current").linked_to == f"/srv/{APP}/releases/v1"


def test_unknown_host_keys_are_refused(story: Story) -> None:
    empty = story.work / "empty_known_hosts"
    empty.write_text("")
    data = story.lab.inventory()
    data["all"]["vars"]["known_hosts"] = str(empty)  # type: ignore[index]
    inventory = story.work / "no-keys.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    run = story.pytest("--hosts", "web-1", "-m", "pre_switch", inventory=inventory)
    assert run.returncode == 1, run.stdout[-3000:]
    # the tests reading what to verify fail in that fixture's setup; the other test itself
    summary = run.stdout.strip().splitlines()[-1]
    assert f" 1 failed, 2 deselected, {len(PRE) - 1} errors in " in summary, run.stdout[-3000:]
    assert "During handling" not in run.stdout
    assert "Traceback" not in run.stdout and "paramiko" not in run.stdout
    assert f"[host web-1] the host key of {story.lab.address('web-1')}:22 is unknown" in run.stdout
