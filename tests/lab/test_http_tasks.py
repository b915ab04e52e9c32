"""HTTP check steps in a Runner over the lab: from the controller to each web host's nginx.

The lab's default nginx site answers every request with the host's name, so a
check against ``http://{address}/`` proves the URL was filled with that host's
address. The checks send nothing over SSH but the runner's one batched probe.
"""

from __future__ import annotations

import pytest

from deploykit.inventory import Inventory
from deploykit.result import RunReport, Status
from deploykit.runner import Runner
from deploykit.tasks import http
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

WEB = ("web-1", "web-2")


def requests_logged(lab: Lab, name: str) -> int:
    """Lines in the host's nginx access log (one per request)."""
    return int(lab.nsenter(name, ["sh", "-c", "wc -l < /var/log/nginx/access.log"]).stdout)


def statuses(report: RunReport, name: str) -> list[str]:
    return [r.status.value for r in report.hosts[name].results]


def test_checks_run_against_each_hosts_address(lab: Lab, lab_inventory: Inventory) -> None:
    before = {name: requests_logged(lab, name) for name in WEB}
    runner = Runner([
        http.wait_for_task("http://{address}/", contains="web-"),
        http.measure_task("http://{address}/", n=50, concurrency=4, max_error_rate=0.0,
                          max_p95=5.0),
    ])
    report = runner.run(lab_inventory.select("web"))
    for name in WEB:
        assert statuses(report, name) == ["ok", "ok"]
        waited, measured = report.hosts[name].results
        address = lab.address(name)
        assert waited.data["url"] == f"http://{address}/"
        assert waited.data["response"]["status"] == 200
        assert waited.data["response"]["body"] == f"{name}\n"
        assert (measured.data["requests"], measured.data["errors"],
                measured.data["statuses"]) == (50, 0, {"200": 50})
        assert 0 < measured.data["p50"] <= measured.data["p95"] <= measured.data["p99"]
        assert requests_logged(lab, name) == before[name] + 51
        # nothing at all over SSH: HTTP checks have no shell probe to batch
        assert runner.logs[name] == []


def test_a_failed_check_fails_its_host_only(lab: Lab, lab_inventory: Inventory) -> None:
    report = Runner([http.expect_version_task("http://{address}/", "web-1")]).run(
        lab_inventory.select("web"))
    assert statuses(report, "web-1") == ["ok"]
    assert statuses(report, "web-2") == ["failed"]
    failed = report.hosts["web-2"].results[0]
    assert failed.message.startswith(f"GET http://{lab.address('web-2')}/: wrong version after "
                                     "1 attempt in ")
    assert "version is 'web-2', expected 'web-1'; last response: HTTP 200 OK" in failed.message


def test_nothing_listening_is_reported_with_the_address(lab: Lab,
                                                        lab_inventory: Inventory) -> None:
    address = lab.address("web-1")
    report = Runner([http.wait_for_task("http://{address}:81/", retries=2, interval=0.05)]).run(
        lab_inventory.select("web-1"))
    result = report.hosts["web-1"].results[0]
    assert result.status is Status.FAILED
    assert result.message.startswith(f"GET http://{address}:81/: not ready after 3 attempts in ")
    assert result.message.endswith(f": connection refused by {address}:81")
    assert result.data["attempts"] == 3


def test_checks_in_check_mode(lab: Lab, lab_inventory: Inventory) -> None:
    before = requests_logged(lab, "web-1")
    runner = Runner([http.wait_for_task("http://{address}/"),
                     http.measure_task("http://{address}/", n=5, in_check_mode=False)],
                    check=True)
    report = runner.run(lab_inventory.select("web-1"))
    assert statuses(report, "web-1") == ["ok", "skipped"]
    assert report.hosts["web-1"].results[1].message == "not run in check mode"
    assert requests_logged(lab, "web-1") == before + 1
    assert runner.logs["web-1"] == []  # no shell probe to batch, nothing sent over SSH


def test_via_ssh_reaches_what_listens_on_the_hosts_loopback(lab: Lab,
                                                           lab_inventory: Inventory) -> None:
    runner = Runner([
        http.wait_for_task("http://127.0.0.1/", contains="web-", via_ssh=True),
        http.measure_task("http://127.0.0.1/", n=10, concurrency=2, max_error_rate=0.0,
                          via_ssh=True),
    ])
    report = runner.run(lab_inventory.select("web"))
    for name in WEB:
        assert statuses(report, name) == ["ok", "ok"]
        waited, measured = report.hosts[name].results
        assert waited.data["response"]["body"] == f"{name}\n"  # that host's own nginx
        assert waited.data["response"]["url"] == "http://127.0.0.1/"
        assert (measured.data["requests"], measured.data["errors"]) == (10, 0)
        last = lab.nsenter(name, ["tail", "-n", "11", "/var/log/nginx/access.log"]).stdout
        assert [line.split()[0] for line in last.splitlines()] == ["127.0.0.1"] * 11

    failed = Runner([http.wait_for_task("http://127.0.0.1:81/", retries=1, interval=0.05,
                                        via_ssh=True)]).run(lab_inventory.select("web-1"))
    result = failed.hosts["web-1"].results[0]
    assert result.status is Status.FAILED
    assert result.message.startswith("GET http://127.0.0.1:81/: not ready after 2 attempts in ")
    assert result.message.endswith(": connection to 127.0.0.1:81 refused or closed "
                                   "(through SSH to web-1)")
    assert result.data["response"]["error"] == "connection to 127.0.0.1:81 refused or closed"
