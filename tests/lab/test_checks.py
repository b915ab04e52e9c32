"""Pre-flight checks over real SSH on the lab: each fault injected for real fails its own
check with its own message, everything else passing.

Faults: a full 1 MiB tmpfs mounted into a host's mount namespace (``lab.nsenter``,
unmounted in ``finally``); a port nobody listens on and Redis stopped; a ``.env``
with weak secrets (whose values must appear nowhere: messages, results, reports,
the connection's command log); a missing, stale and corrupt backup. Files live
under /srv and /var/backups, which ``clean_lab`` empties after each test. The
CI status check (controller-only, a real local HTTP server) is covered in
tests/unit/test_checks_plan.py.
"""

from __future__ import annotations

import dataclasses
import json
import secrets as random
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.result import Result, Status
from deploykit.runner import Runner
from deploykit.tasks import checks
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]
KEYS = ["SECRET_KEY", "DB_PASSWORD", "API_TOKEN"]


@pytest.fixture
def work(clean_lab: Lab) -> str:
    """A per-test path prefix under /srv (emptied by clean_lab afterwards)."""
    return f"/srv/dkck-{uuid.uuid4().hex[:8]}"


def strong() -> str:
    return random.token_urlsafe(24)


def write_env(conn: Connection, path: str, values: dict[str, str]) -> None:
    conn.run(["mkdir", "-p", path.rsplit("/", 1)[0]])
    conn.put("".join(f"{k}={v}\n" for k, v in values.items()), path, mode=0o600)


def write_backup(conn: Connection, directory: str, name: str = "shop-d1.dump",
                 hours_old: float = 0.0) -> str:
    """A dump with its sha256sum sidecar (the postgres backup task's layout)."""
    conn.run(["mkdir", "-p", directory])
    conn.put(random.token_bytes(4096), f"{directory}/{name}")
    conn.run(f"cd {directory} && sha256sum {name} > {name}.sha256 && "
             f"touch -d '@'$(( $(date +%s) - {int(hours_old * 3600)} )) {name}")
    return f"{directory}/{name}"


def by_task(report: checks.PreflightReport, host: str) -> dict[str, tuple[str, str]]:
    return {r.task: (r.status.value, r.message) for r in report.results if r.host == host}


def git_repo(path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    git("init", "-q")
    (path / "f").write_text("f\n")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "m")


def test_a_healthy_fleet_passes_with_one_read_per_host(lab_connection: Ssh, work: str,
                                                       tmp_path: Path) -> None:
    web, db = lab_connection("web-1"), lab_connection("db-1")
    for conn in (web, db):
        write_env(conn, f"{work}/.env", {k: strong() for k in KEYS})
        write_backup(conn, f"{work}/backups", hours_old=2)
    git_repo(tmp_path)
    all_checks = [
        checks.git_clean(str(tmp_path)),
        checks.resources(["/", "/srv"], min_free_mb=1, min_memory_mb=1),
        checks.ports(listening=[22], free=[8765]),
        checks.env_secrets(f"{work}/.env", KEYS),
        checks.backup(f"{work}/backups", max_age_hours=24),
        checks.reachable(22),
        checks.command("test -r /etc/ssh/sshd_config"),
    ]
    web_log, db_log = len(web.log), len(db.log)
    report = checks.run_preflight([web, db], all_checks)
    assert report.ok, report.render()
    assert [(r.task.split()[0], r.host) for r in report.results] == [
        ("git-clean", "(controller)"),
        *[(c.name.split()[0], h) for c in all_checks[1:] for h in ("web-1", "db-1")]]
    for conn, start in ((web, web_log), (db, db_log)):
        sent = conn.log[start:]
        assert len(sent) == 1 and not sent[0].write  # every host check: one read
    messages = by_task(report, "db-1")
    assert messages[f"backup {work}/backups"] == (
        "ok", "backup shop-d1.dump is 2.0 h old, checksum verified")
    assert messages[f"secrets {work}/.env"] == (
        "ok", f"3 secret(s) present and not weak in {work}/.env")
    assert messages["reachable :22"][1].startswith(f"{db.host.address}:22 reachable")


def test_a_full_disk_fails_the_resources_check_alone(lab: Lab, lab_connection: Ssh,
                                                     work: str) -> None:
    full = f"{work}/full"
    conn = lab_connection("web-2")
    conn.run(["mkdir", "-p", full])
    lab.nsenter("web-2", ["mount", "-t", "tmpfs", "-o", "size=1m", "dkck-full", full])
    try:
        conn.run(f"dd if=/dev/zero of={full}/fill bs=64k 2>/dev/null || :")
        report = checks.run_preflight([conn], [
            checks.resources([full], min_free_mb=1, min_memory_mb=None, name="data disk"),
            checks.resources(["/"], min_free_mb=1, name="root disk"),
        ])
    finally:
        lab.nsenter("web-2", ["umount", full])
    assert by_task(report, "web-2") == {
        "data disk": ("failed", f"disk: {full} has 0 B free (0.0% of 1.0 MiB), "
                                f"needs at least 1.0 MiB"),
        "root disk": ("ok", by_task(report, "web-2")["root disk"][1]),
    }
    assert report.failed[0].data["disk"][full] == {"free_mb": 0, "size_mb": 1,
                                                   "free_percent": 0.0}


def test_ports_not_listening_or_taken_each_fail_with_the_port(lab: Lab, lab_connection: Ssh,
                                                              clean_lab: Lab) -> None:
    web, db = lab_connection("web-1"), lab_connection("db-1")
    assert run_read_only(checks.ports(listening=[80, 22]), web).status is Status.OK
    assert run_read_only(checks.ports(listening=[8765]), web).message == (
        "nothing listens on TCP port(s) 8765 (must be listening)")
    assert run_read_only(checks.ports(free=[80]), web).message == (
        "TCP port(s) 80 already in use (must be free)")
    lab.stop_service("db-1", "redis")
    try:
        result = checks.ports(listening=[5432, 6379]).run(db)
    finally:
        lab.start_service("db-1", "redis")
    assert (result.status, result.message) == (
        Status.FAILED, "nothing listens on TCP port(s) 6379 (must be listening)")
    assert checks.ports(listening=[5432, 6379]).run(db).status is Status.OK


def test_weak_secrets_are_named_and_their_values_never_appear(lab_connection: Ssh,
                                                              work: str) -> None:
    conn = lab_connection("web-1")
    short, default, good = random.token_hex(4), "ChangeMe", strong()
    env = f"{work}/app/.env"
    write_env(conn, env, {"SECRET_KEY": short, "DB_PASSWORD": default, "API_TOKEN": good})
    check = checks.env_secrets(env, KEYS)
    start = len(conn.log)
    report = checks.run_preflight([conn], [check, checks.resources(min_free_mb=1)])
    (failed,) = report.failed
    assert failed.message == (f"secrets in {env}: SECRET_KEY is shorter than 12 characters; "
                              f"DB_PASSWORD is a known default value")
    assert failed.data == {"keys": {"SECRET_KEY": "short", "DB_PASSWORD": "default",
                                    "API_TOKEN": "ok"}}
    shown = "\n".join([report.render(), json.dumps(report.to_dict()),
                       *(e.command for e in conn.log[start:]), repr(check.probe(conn))])
    for value in (short, default, good):
        assert value not in shown
    with pytest.raises(checks.PreflightError) as info:
        report.raise_for_failures()
    assert short not in str(info.value) and "SECRET_KEY is shorter" in str(info.value)


def run_read_only(check: checks.Check, conn: Connection) -> Result:
    """Run a check alone; it must send exactly one command, a read."""
    start = len(conn.log)
    result = check.run(conn)
    assert [e.write for e in conn.log[start:]] == [False]
    return result


def test_missing_stale_and_corrupt_backups_each_say_why(lab_connection: Ssh,
                                                        clean_lab: Lab) -> None:
    conn = lab_connection("db-1")
    directory = f"/var/backups/dkck-{uuid.uuid4().hex[:8]}"
    check = checks.backup(directory, max_age_hours=24)
    assert run_read_only(check, conn).message == f"backup: {directory} does not exist"
    conn.run(["mkdir", "-p", directory])
    assert run_read_only(check, conn).message == (
        f"backup: no backup matching *.dump in {directory}")

    write_backup(conn, directory, "shop-old.dump", hours_old=30)
    result = run_read_only(check, conn)
    assert (result.status, result.message) == (
        Status.FAILED, f"backup: newest backup shop-old.dump in {directory} is 30.0 h old "
                       f"(max 24 h)")

    dump = write_backup(conn, directory, "shop-new.dump", hours_old=1)
    assert run_read_only(check, conn).status is Status.OK
    conn.run(f"printf x >> {dump}")  # one byte more: the sidecar no longer matches
    assert run_read_only(check, conn).message == (
        f"backup: {dump} is corrupt: its SHA-256 does not match shop-new.dump.sha256")


def test_skipped_checks_are_recorded_and_never_probed(lab_connection: Ssh, work: str) -> None:
    conn = lab_connection("web-2")
    all_checks = [checks.resources(min_free_mb=1, min_memory_mb=1),
                  checks.env_secrets(f"{work}/.env", KEYS),
                  checks.backup(f"{work}/backups")]
    start = len(conn.log)
    report = checks.run_preflight([conn], all_checks,
                                  skip=["backup", f"secrets {work}/.env"])
    assert [(r.task.split()[0], r.status.value, r.message)
            for r in report.results][1:] == [
        ("secrets", "skipped", "skipped on request (skip list)"),
        ("backup", "skipped", "skipped on request (skip list)")]
    assert report.ok and report.summary() == "pre-flight: 1 ok, 0 failed, 2 skipped"
    assert all(work not in e.command for e in conn.log[start:])


def test_checks_as_runner_steps_are_ok_or_failed_never_changed(
        lab_inventory: Inventory, work: str) -> None:
    steps = [checks.resources(min_free_mb=1, min_memory_mb=1), checks.reachable(22),
             checks.command("test -d /etc/nginx", name="nginx config dir"),
             checks.ports(listening=[8765], name="app port")]
    runner = Runner(steps)
    report = runner.run(lab_inventory.select("web-1,web-2"))
    for host in ("web-1", "web-2"):
        results = report.hosts[host].results
        assert [r.status.value for r in results] == ["ok", "ok", "ok", "failed"]
        assert results[3].message == "nothing listens on TCP port(s) 8765 (must be listening)"
        assert not any(e.write for e in runner.logs[host])
    again = Runner(steps, check=True).run(lab_inventory.select("web-1"))
    assert [r.status.value for r in again.hosts["web-1"].results] == [
        "ok", "ok", "ok", "failed"]


def test_an_unreachable_host_fails_its_checks_with_the_reason(
        lab: Lab, lab_inventory: Inventory, lab_connection: Ssh) -> None:
    dead = lab.unused_address()  # in the lab's network, nobody there
    ghost = dataclasses.replace(lab_inventory.host("web-1"), name="ghost", address=dead)
    report = checks.run_preflight(
        [lab_connection("web-1"), ghost],
        [checks.resources(min_free_mb=1), checks.reachable(22, timeout=1)], connect_timeout=2)
    ghost_results = by_task(report, "ghost")
    assert ghost_results["resources /"] == (
        "failed", f"host unreachable: cannot reach {dead}:22: no answer within 2 s")
    assert ghost_results["reachable :22"][0] == "failed"
    assert ghost_results["reachable :22"][1].startswith(
        f"{dead}:22 is not reachable from the controller")
    assert {s for s, _ in by_task(report, "web-1").values()} == {"ok"}


@pytest.fixture(autouse=True)
def _no_lingering_mounts(lab: Lab) -> Iterator[None]:
    yield
    mounts = lab.nsenter("web-2", ["cat", "/proc/self/mounts"]).stdout
    assert "dkck-full" not in mounts
