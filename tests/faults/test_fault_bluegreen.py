"""Real faults during real blue/green deploys through the pipeline (lock, backup, strategy,
journal, run report), on the lab: v1 serves on both web hosts, a deploy of v2 (or of a
release with a broken migration) meets a fault, and afterwards

* nothing was lost: the items written before are there, the schema is what it was;
* the fleet is in a known good state: v1 through nginx on both hosts, healthy, one colour;
* the summary, the run report and every host's history say what happened, and where;
* the lock is released on every host.

Blue/green is all-or-nothing: a fault on one host refuses the release on every host.
The tests share the fleet in file order; cheap faults (before any upload) come first,
and after the first release install, v2 stays installed (and is not re-uploaded).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from faultkit import APP, HOSTS, WEB, Fleet, Tripwire, phase_line, step_line

from deploykit.pipeline import DeploySummary

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def v1_with_data(fleet: Fleet) -> None:
    """v1 on both hosts, with an item written through the app."""
    fleet.ensure("v1")
    fleet.add_item("written-before-the-faults")


def assert_refused(fleet: Fleet, summary: DeploySummary, result: str = "failed") -> None:
    """The release was refused and the fleet is exactly as before: v1, data, schema <= 2,
    the lock released, the journal's end entry on every host saying ``result``."""
    assert summary.result == result, summary.message
    fleet.assert_v1_everywhere()
    assert "written-before-the-faults" in fleet.items()
    assert fleet.unlocked()
    assert fleet.ends(summary.deploy_id) == dict.fromkeys(HOSTS, result)
    end = next(e for e in fleet.history("db-1") if e["id"] == summary.deploy_id
               and e["event"] == "end")
    assert end["message"].startswith(summary.message)
    report = fleet.report(summary)
    final = report.hosts["(controller)"].results[-1]
    assert (final.task, final.status.value, final.message) == ("deploy", "failed",
                                                              summary.message)


def failed_steps(fleet: Fleet, summary: DeploySummary) -> dict[str, list[str]]:
    """Per host, ``task: message`` of the failed steps in the run report, then the host's
    own error (an unreachable host has no failed step, only that)."""
    report = fleet.report(summary)
    return {h: [f"{r.task}: {r.message}" for r in entry.results if r.failed]
            + ([entry.error] if entry.error else [])
            for h, entry in report.hosts.items() if h != "(controller)" and entry.failed}


# -- before anything reaches the web hosts ------------------------------------------------------


def test_a_migration_failing_halfway_is_undone_and_nothing_reaches_the_web_hosts(
        fleet: Fleet) -> None:
    assert fleet.schema() == 1
    summary, _ = fleet.deploy("v3-badmig")
    assert_refused(fleet, summary)
    assert re.search(r"database phase failed: 'migrate sampleapp \S+' failed on db-1; traffic "
                     r"stays on (blue|green)", summary.message), summary.message
    [message] = failed_steps(fleet, summary)["db-1"]
    assert "0004_add_weight.up.sql" in message and "CHEK" in message, message
    # 0002 and 0003 applied in their own transactions, then the undo took them back
    undone = fleet.report(summary).hosts["db-1"].undone
    assert len(undone) == 1 and "roll back" in undone[0], undone
    assert fleet.schema() == 1
    tables = {r[0] for r in fleet.sql("SELECT tablename FROM pg_tables WHERE schemaname = "
                                      "'public'")}
    assert tables == {"items", "schema_migrations"}  # no item_tags, no half of 0004
    for host in WEB:
        assert not fleet.infra(host).file(f"/srv/{APP}/releases/v3-badmig").exists


@pytest.mark.parametrize("inodes", [False, True], ids=["no-bytes-left", "no-inodes-left"])
def test_a_full_disk_during_the_backup_stops_the_deploy_before_any_change(
        fleet: Fleet, inodes: bool) -> None:
    fleet.faults.fill("db-1", "/var/backups", inodes=inodes)
    try:
        summary, _ = fleet.deploy("v2")
        listing = fleet.lab.nsenter("db-1", ["find", "/var/backups"]).stdout.split()
    finally:
        fleet.faults.unfill("db-1", "/var/backups")
    assert_refused(fleet, summary)
    assert summary.message.startswith("[host db-1, task backup sampleapp] ")
    if inodes:  # df shows room: the dump itself hits the full disk
        assert "No space left on device" in summary.message, summary.message
    else:  # the backup sees there is no room before writing anything
        assert "not enough free space for a backup of database 'sampleapp' in " \
            "/var/backups/sampleapp on host db-1: 0 B free" in summary.message
    assert summary.message.endswith("traffic was not moved")
    assert [f for f in listing if summary.deploy_id in f] == []  # no partial dump left
    assert fleet.schema() == 1  # the migrations never ran without their backup
    for host in WEB:
        assert not fleet.infra(host).file(f"/srv/{APP}/releases/v2").exists


def test_a_full_disk_during_the_artifact_upload_fails_cleanly(fleet: Fleet) -> None:
    releases = f"/srv/{APP}/releases"
    fleet.faults.fill("web-2", releases)
    try:
        summary, _ = fleet.deploy("v2", host="web-2")
        leftovers = fleet.lab.nsenter("web-2", ["ls", "-A", releases]).stdout.split()
    finally:
        fleet.faults.unfill("web-2", releases)
    assert summary.result == "failed", summary.message
    assert summary.message.startswith("v2 failed before the switch on green: "
                                      "'releases.install sampleapp v2' failed on web-2")
    [message] = failed_steps(fleet, summary)["web-2"]
    assert "No space left on device" in message, message
    assert sorted(f for f in leftovers if f != ".dk-fill") == ["v1"]  # no half-written upload
    fleet.assert_v1_everywhere()
    assert fleet.ends(summary.deploy_id) == {"web-2": "failed", "db-1": "failed"}
    assert fleet.unlocked()


# -- nginx refuses ---------------------------------------------------------------------------------


def test_nginx_t_failing_on_the_new_config_switches_nothing(fleet: Fleet) -> None:
    # as the switch starts, each web host's nginx gets a file nginx -t rejects; it goes
    # again once that host's switch has failed (before the undo reloads nginx)
    broken = "/etc/nginx/conf.d/zz-deploykit-fault.conf"

    def plant() -> None:
        for host in WEB:
            fleet.lab.nsenter(host, ["sh", "-c", f"echo 'not nginx' > {broken}"])

    def unplant(host: str) -> Callable[[], None]:
        def remove() -> None:
            fleet.lab.nsenter(host, ["rm", "-f", broken])
        return remove

    out = Tripwire().on(phase_line("switch traffic and verify it"), plant)
    for host in WEB:
        out.on(step_line(host, "nginx: traffic to green", "failed"), unplant(host))
    try:
        summary, out = fleet.deploy("v2", out)
    finally:
        for host in WEB:
            unplant(host)()
    out.assert_fired()
    assert_refused(fleet, summary, "rolled_back")
    failed = failed_steps(fleet, summary)
    assert set(failed) == set(WEB)
    for host in WEB:
        [message] = failed[host]
        assert message.startswith("nginx: traffic to green: nginx -t fails before any change, "
                                  "nothing written"), message
        assert fleet.infra(host).run("nginx -t").rc == 0
        assert fleet.programs(host)[f"{APP}-green"] == "STOPPED"
        # nginx refused the change, not the release: v2 is kept and not blamed
        assert fleet.infra(host).file(f"/srv/{APP}/releases/v2").exists
        assert not fleet.infra(host).file(f"/srv/{APP}/releases/v2/.failed").exists


def test_a_failing_nginx_reload_on_one_host_switches_every_host_back(fleet: Fleet) -> None:
    out = Tripwire().on(phase_line("switch traffic and verify it"),
                        lambda: fleet.faults.stop("web-2", "nginx"))
    try:
        summary, out = fleet.deploy("v2", out)
    finally:
        fleet.faults.start("web-2", "nginx")
    out.assert_fired()
    assert_refused(fleet, summary, "rolled_back")
    failed = failed_steps(fleet, summary)
    assert list(failed) == ["web-2"], failed
    assert "reload" in failed["web-2"][0], failed
    # web-1 had moved: the fleet-wide undo put it back (and said so)
    assert fleet.report(summary).hosts["web-1"].undone
    for host in WEB:
        assert fleet.programs(host)[f"{APP}-green"] == "STOPPED"


# -- a web host goes away --------------------------------------------------------------------------


def test_sshd_killed_on_one_host_mid_deploy_refuses_the_release_on_every_host(
        fleet: Fleet) -> None:
    # sshd (listener and sessions) dies after web-2 wrote the release's env file; it is back
    # by the time web-2's failure is reported, so the undo and the lock release reach it
    out = (Tripwire()
           .on(step_line("web-2", r"env file v2"),
               lambda: fleet.faults.kill_sshd("web-2"))
           .on(step_line("web-2", r"\S+", "(?:failed|unreachable)"),
               lambda: fleet.faults.restore_sshd("web-2")))
    try:
        summary, out = fleet.deploy("v2", out)
    finally:
        fleet.faults.restore_sshd("web-2")
    out.assert_fired()
    assert_refused(fleet, summary)
    failed = failed_steps(fleet, summary)
    assert list(failed) == ["web-2"], failed
    web2 = re.escape(fleet.address("web-2"))
    assert re.search(rf"cannot reach {web2}:22: Connection refused|connection to {web2}:22 lost",
                     failed["web-2"][0]), failed
    # green never ran on web-1 before this deploy: it is stopped, or gone as it was
    assert fleet.programs("web-1").get(f"{APP}-green", "ABSENT") in ("STOPPED", "ABSENT")


def test_a_network_partition_of_one_host_mid_deploy_refuses_the_release(fleet: Fleet) -> None:
    green = {h: fleet.link(h, "green") for h in WEB}
    out = (Tripwire()
           .on(step_line("web-2", r"releases\.switch sampleapp green"),
               lambda: fleet.faults.partition("web-2"))
           .on(step_line("web-2", r"\S+", "(?:failed|unreachable)"),
               lambda: fleet.faults.heal("web-2")))
    try:
        summary, out = fleet.deploy("v2", out)
    finally:
        fleet.faults.heal("web-2")
    out.assert_fired()
    assert_refused(fleet, summary)
    failed = failed_steps(fleet, summary)
    assert list(failed) == ["web-2"], failed
    web2 = re.escape(fleet.address("web-2"))
    assert re.search(rf"connection to {web2}:22 lost while running .*: Timeout opening channel"
                     rf"|cannot reach {web2}:22: no answer within", failed["web-2"][0],
                     re.DOTALL), failed
    # once the partition healed, web-2 was put back too: green is back as it was
    for host in WEB:  # green did not run before this deploy: stopped, or gone as it was
        assert fleet.programs(host).get(f"{APP}-green", "ABSENT") in ("STOPPED", "ABSENT")
        assert fleet.link(host, "green") == green[host]


# -- the database goes away ------------------------------------------------------------------------


def test_postgres_stopped_during_the_health_gate_refuses_the_release(fleet: Fleet) -> None:
    out = Tripwire().on(step_line("web-1", r"program sampleapp-green"),
                        lambda: fleet.faults.stop("db-1", "postgres"))
    try:
        summary, out = fleet.deploy("v2", out)
    finally:
        fleet.faults.start("db-1", "postgres")
    out.assert_fired()
    assert_refused(fleet, summary)
    failed = failed_steps(fleet, summary)
    assert failed["web-1"][0].startswith("health gate: green /health"), failed


def test_redis_stopped_during_the_switch_switches_back(fleet: Fleet) -> None:
    out = Tripwire().on(step_line(r"web-[12]", r"nginx: traffic to green"),
                        lambda: fleet.faults.stop("db-1", "redis"))
    try:
        summary, out = fleet.deploy("v2", out)
    finally:
        fleet.faults.start("db-1", "redis")
    out.assert_fired()
    assert_refused(fleet, summary, "rolled_back")
    failed = failed_steps(fleet, summary)
    assert any(m.startswith("verify: health through nginx") for ms in failed.values()
               for m in ms), failed
    assert "traffic switched back to blue" in summary.message
