"""Suite gates and ``pytest --inventory`` without the lab.

Where the strategies put their gates (plans only), the deploy context as pytest
options, the inventory handed to suite processes, merged JUnit XML, and the
plugin's selectors over an inventory whose hosts refuse connections
(127.0.0.1, port 1): collection by selector, usage errors, and one-line
connection failures per host in ``run_suite``'s results.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deploykit.artifacts import Artifact
from deploykit.errors import ConfigError
from deploykit.inventory import Inventory
from deploykit.strategies.bluegreen import BlueGreen
from deploykit.verify import (
    DeployContext,
    HostVerification,
    TestOutcome,
    Verification,
    inventory_data,
    run_suite,
)

INVENTORY = """\
all:
  vars: {user: deploy, known_hosts: /nonexistent/known_hosts, become: true}
  children:
    web:
      vars: {app_port: 8000}
      hosts:
        web-1: {address: 127.0.0.1, port: 1}
        web-2: {address: 127.0.0.1, port: 1, app_port: 9000}
    db:
      hosts:
        db-1: {address: 127.0.0.1, port: 1, vars: {postgres_port: 5432}}
"""
SUITE = """\
import pytest

def test_vars(host_vars, host):
    assert host_vars["app_port"] == {"web-1": 8000, "web-2": 9000}[host.backend.get_hostname()]

@pytest.mark.pre_switch
def test_reaches_the_host(host):
    assert host.file("/etc/passwd").exists
"""


@pytest.fixture
def inventory_file(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(INVENTORY)
    return path


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite"
    path.mkdir()
    (path / "test_state.py").write_text(SUITE)
    return path


def artifact(tmp_path: Path) -> Artifact:
    return Artifact("shop", "v2", tmp_path / "shop-v2.tar.gz", "0" * 64, 1)


# -- the gates' places -------------------------------------------------------------------------


# The gates' places in blue/green and rolling: tests/unit/test_strategy_plans.py.


def test_a_missing_suite_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verify_suite '/nonexistent/suite' not found"):
        BlueGreen("shop", artifact(tmp_path), "X=1\n", verify_suite="/nonexistent/suite")


# -- context, inventory, results ---------------------------------------------------------------


def test_deploy_context_as_options_and_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = DeployContext(app="shop", version="v2", color="green", port=8002, phase="pre_switch")
    assert ctx.options() == ["--deploy-app", "shop", "--deploy-version", "v2",
                             "--deploy-color", "green", "--deploy-port", "8002",
                             "--deploy-phase", "pre_switch"]
    monkeypatch.setenv("DEPLOYKIT_RELEASE", "v2-1")
    monkeypatch.setenv("DEPLOYKIT_PORT", "8001")
    got = DeployContext.from_values({"app": "shop", "port": None})
    assert (got.app, got.release, got.port, got.color) == ("shop", "v2-1", 8001, None)
    assert got.missing() == ["version", "color", "program"]
    with pytest.raises(ConfigError, match="deploy phase must be one of"):
        DeployContext(phase="during")
    monkeypatch.setenv("DEPLOYKIT_PORT", "http")
    with pytest.raises(ConfigError, match="deploy port must be a number, not 'http'"):
        DeployContext.from_values({})


def test_the_suite_inventory_keeps_settings_vars_and_groups(inventory_file: Path) -> None:
    source = Inventory.load(inventory_file)
    copy = Inventory.from_dict(inventory_data(source.select("web-2,db-1")))
    assert list(copy.hosts) == ["web-2", "db-1"]
    for name in copy.hosts:
        a, b = source.host(name), copy.host(name)
        assert (a.address, a.port, a.user, a.known_hosts, a.become, dict(a.vars)) == \
            (b.address, b.port, b.user, b.known_hosts, b.become, dict(b.vars))
    assert [h.name for h in copy.select("web")] == ["web-2"]


def test_junit_files_merge_into_one_listing_every_host() -> None:
    def suite(host: str, failures: int) -> str:
        case = f'<testcase classname="t" name="test_a[deploykit://{host}]"/>'
        return (f'<testsuites><testsuite name="s" tests="1" failures="{failures}" errors="0" '
                f'skipped="0">{case}</testsuite></testsuites>')

    run = Verification("suite", "pre_switch", junit_suites=[suite("web-1", 0), suite("web-2", 1)])
    root = ET.fromstring(run.junit_xml())
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "2", "1")
    assert [c.get("name") for c in root.iter("testcase")] == [
        "test_a[deploykit://web-1]", "test_a[deploykit://web-2]"]


def test_a_host_summary_names_the_failed_tests() -> None:
    host = HostVerification("web-1", [
        TestOutcome("web-1", "test_a", "x::test_a", "passed"),
        TestOutcome("web-1", "test_b", "x::test_b", "failed", message="assert 420 == 384"),
        TestOutcome("web-1", "test_c", "x::test_c", "error", message="host key unknown")])
    assert not host.ok
    assert host.summary() == ("2 of 3 failed: test_b (assert 420 == 384); test_c (host key "
                              "unknown)")
    assert HostVerification("web-2").summary() == "no tests selected"
    assert HostVerification("web-2").ok


# -- the plugin over an inventory --------------------------------------------------------------


def pytest_run(suite: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider",
                           *args], capture_output=True, text=True, timeout=120, check=False)


def test_hosts_are_deploykit_selectors(suite: Path, inventory_file: Path) -> None:
    run = pytest_run(suite, "--inventory", str(inventory_file), "--hosts", "web-*,db-1",
                     "--collect-only", "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    ids = {line.split("::", 1)[1] for line in run.stdout.splitlines() if "::" in line}
    assert ids == {f"{test}[deploykit://{h}]" for test in ("test_vars", "test_reaches_the_host")
                   for h in ("db-1", "web-1", "web-2")}

    run = pytest_run(suite, "--inventory", str(inventory_file), "--hosts", "wbe")
    assert run.returncode == 4
    assert "selector 'wbe' matches no host or group (did you mean 'web'?" in run.stderr, run.stderr
    run = pytest_run(suite, "--inventory", str(inventory_file), "--connection", "paramiko")
    assert run.returncode == 4 and "drop --connection paramiko" in run.stderr


def test_run_suite_reports_each_host_with_one_line_errors(suite: Path,
                                                          inventory_file: Path) -> None:
    hosts = Inventory.load(inventory_file).select("web")
    result = run_suite(hosts, suite, forks=2)
    assert list(result.hosts) == ["web-1", "web-2"] and result.failed_hosts == ["web-1", "web-2"]
    for name, host in result.hosts.items():
        assert [(t.name, t.outcome) for t in host.tests] == [
            ("test_vars", "passed"), ("test_reaches_the_host", "failed")]
        assert host.tests[1].message == (f"[host {name}] cannot reach 127.0.0.1:1: "
                                         "Connection refused")
    root = ET.fromstring(result.junit_xml())
    assert root.get("tests") == "4" and root.get("failures") == "2"

    only = run_suite(hosts, suite, marker="not pre_switch", forks=1)
    assert only.ok and [len(h.tests) for h in only.hosts.values()] == [1, 1]
    with pytest.raises(ConfigError, match="verify suite '/nonexistent' not found"):
        run_suite(hosts, "/nonexistent")
