"""Day-2 operations through the real CLI on the lab: exec, logs, maintenance, prune.

Every command runs as a subprocess of ``invoke`` with a tasks.py (the deploy tasks
plus :func:`deploykit.cli.ops.add_ops_tasks`) and a deploykit.yml written into a
temporary directory. The sample app v1 is deployed once (maintenance and prune need
a site and releases); the hosts are reset and the app's databases dropped at the end.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra.host
import yaml

from deploykit import journal, pg
from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.tasks import http
from deploykit.tasks.maintenance import is_on
from deploykit.testing.lab import Lab
from deploykit.testing.sample import drop_databases

pytestmark = pytest.mark.lab

APP = "sampleapp"
WEB = ("web-1", "web-2")
TASKS_PY = """\
from invoke.collection import Collection

from deploykit.cli.deploy import add_deploy_tasks as add_tasks
from deploykit.cli.ops import add_ops_tasks

ns = add_ops_tasks(add_tasks(Collection()))
"""
# the pid and command line of every tail/grep running in this host's mount namespace
REMOTE_PROCESSES = (
    'me=$(readlink /proc/self/ns/mnt); for p in $(pgrep -x tail) $(pgrep -x grep); do '
    '[ "$(readlink /proc/$p/ns/mnt 2>/dev/null)" = "$me" ] || continue; '
    'printf "%s %s\\n" "$p" "$(tr "\\0" " " < /proc/$p/cmdline)"; done')


@dataclass
class Ops:
    root: Path
    project_root: Path
    lab: Lab
    inventory: Inventory
    ssh: Callable[[str], Connection]
    infra: Callable[[str], testinfra.host.Host]
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [str(self.project_root / ".venv" / "bin" / "invoke"), "-r", str(self.root),
                *args]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*args), cwd=self.project_root, env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def address(self, host: str) -> str:
        return self.inventory.host(host).address

    def sh(self, host: str, script: str) -> str:
        return self.lab.nsenter(host, ["sh", "-c", script]).stdout

    def history(self, host: str, event: str) -> list[dict[str, Any]]:
        f = self.infra(host).file(f"/var/lib/deploykit/{APP}/history.jsonl")
        entries = [json.loads(x) for x in f.content_string.splitlines()] if f.exists else []
        return [e for e in entries if e["event"] == event]




@pytest.fixture(scope="module")
def ops(lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
        lab_host: Callable[[str], testinfra.host.Host], project_root: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    root = tmp_path_factory.mktemp("ops")
    (root / "lab.yml").write_text(yaml.safe_dump(lab.inventory()))
    (root / "tasks.py").write_text(TASKS_PY)
    config = {
        "app": APP, "source": str(project_root / "examples" / "app"),
        "wheelhouse": str(project_root / ".cache" / "wheelhouse"),
        "inventory": "lab.yml", "web": "web", "db": "db", "verify_requests": 5,
        "grace_seconds": 1, "keep_releases": 5,
        "database": {"name": APP, "backup_keep_last": 2},
        "env": {"DATABASE_URL": "${database_url}", "REDIS_URL": "${redis_url}"},
        "preflight": {"min_disk_mb": 64, "min_memory_mb": 32},
    }
    (root / "deploykit.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEPLOYKIT_CONFIG": str(root / "deploykit.yml")}
    env.pop("DEPLOYKIT_WHEELHOUSE", None)
    o = Ops(root, project_root, lab, lab_inventory, lab_connection, lab_host, env)
    lab.reset()
    drop_databases(lab_connection("db-1"), APP)
    try:
        yield o
    finally:
        lab.reset()
        drop_databases(lab_connection("db-1"), APP)


@pytest.fixture(scope="module")
def deployed(ops: Ops) -> Ops:
    done = ops.cli("deploy", "--yes", "--version", "v1")
    assert done.returncode == 0, done.stdout + done.stderr
    return ops


# -- exec -------------------------------------------------------------------------------------


def test_exec_reports_an_unreachable_host_and_runs_on_the_others(ops: Ops) -> None:
    ops.lab.stop_service("web-2", "sshd")
    try:
        done = ops.cli("exec", "hostname; echo to-stderr >&2", "--group", "web")
    finally:
        ops.lab.start_service("web-2", "sshd")
    assert done.returncode != 0
    assert "web-1 | web-1" in done.stdout.splitlines()
    assert "web-1 ! to-stderr" in done.stdout.splitlines()
    assert any(line.startswith("web-2 ! unreachable: cannot reach") for line in
               done.stdout.splitlines()), done.stdout
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines()
            if line.startswith("│ web-")}
    assert "│ ok " in rows["web-1"] and "│ 0 " in rows["web-1"]
    assert "│ unreachable " in rows["web-2"]
    assert [x for x in done.stderr.splitlines() if x.startswith("error:")] == [
        "error: exec: unreachable: web-2"]

    failing = ops.cli("exec", 'test "$(hostname)" = web-1', "--group", "web")
    assert failing.returncode != 0
    assert "error: exec: failed on web-2 (exit code 1)" in failing.stderr
    checked = ops.cli("exec", "touch /tmp/dk-exec-check", "--host", "web-1", "--check")
    assert checked.returncode == 0
    assert checked.stdout.startswith("would run on web-1 (root@")
    assert not ops.infra("web-1").file("/tmp/dk-exec-check").exists


# -- logs -------------------------------------------------------------------------------------


def test_logs_grep_finds_a_line_written_on_one_host_only(ops: Ops) -> None:
    token = f"dk-needle-{uuid.uuid4().hex[:8]}"
    ops.sh("web-2", f'echo "$(date -u "+%Y/%m/%d %H:%M:%S") [error] 1#1: {token}" '
                    ">> /var/log/nginx/error.log")
    done = ops.cli("logs", "--group", "web", "--service", "nginx", "--grep", token,
                   "--since", "10m")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("web-2 error | ") and line.endswith(token)


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], needle: str, timeout: float = 30) -> list[str]:
    seen = []
    while True:
        line = lines.get(timeout=timeout)  # queue.Empty fails the test
        seen.append(line)
        if needle in line:
            return seen


def test_follow_stops_cleanly_on_sigint_and_leaves_no_process_on_the_hosts(ops: Ops) -> None:
    token = f"dk-follow-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(ops.argv("logs", "--group", "web", "--service", "nginx",
                                     "--grep", token, "--follow"),
                            cwd=ops.project_root, env=ops.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = _reader(proc)
        _wait_for(lines, "-- following nginx logs on web-1, web-2")
        for host in WEB:
            running = [x for x in ops.sh(host, REMOTE_PROCESSES).splitlines() if token in x
                       or " -F " in x]
            assert len(running) == 2, running  # tail -F and grep, on each host
        ops.sh("web-1", f'echo "$(date -u "+%Y/%m/%d %H:%M:%S") [warn] 1#1: {token}" '
                        ">> /var/log/nginx/error.log")
        seen = _wait_for(lines, token)
        assert seen[-1].startswith("web-1 error | ") and seen[-1].endswith(token)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr and "stopped following" in stderr
    for host in WEB:
        assert ops.sh(host, REMOTE_PROCESSES).strip() == "", host


# -- maintenance ------------------------------------------------------------------------------


def _from_db_host(ops: Ops, url: str) -> str:
    return ops.lab.nsenter("db-1", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    url]).stdout


def test_maintenance_waits_for_no_deploy_it_is_refused_while_one_holds_the_lock(
        deployed: Ops) -> None:
    """issue 16 item 4: maintenance takes the one lock (a deploy mid-switch is never
    put into maintenance behind its back); nothing changes while another holds it."""
    ops = deployed
    conns = [ops.ssh(h) for h in WEB]
    with journal.fleet_lock(conns, APP, "a-deploy-1"):
        done = ops.cli("maintenance", "on")
    assert done.returncode == 1
    assert re.match(r"error: locked by \S+ \(deploy a-deploy-1, ", done.stderr), done.stderr
    for host in WEB:
        assert not is_on(ops.ssh(host), APP)
        assert ops.history(host, "maintenance") == []
        assert journal.lock_status(ops.ssh(host), APP) is None


def test_maintenance_answers_503_except_health_and_allowed_addresses(deployed: Ops) -> None:
    ops = deployed
    allowed = ops.address("db-1")
    done = ops.cli("maintenance", "on", "--allow", allowed, "--retry-after", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    for host in WEB:
        url = f"http://{ops.address(host)}"
        page = http.request(f"{url}/version")
        assert page.status == 503 and page.headers.get("Retry-After") == "120"
        assert "Down for maintenance" in page.text
        health = http.request(f"{url}/health")
        assert health.status == 200 and health.json()["status"] == "ok"
        assert _from_db_host(ops, f"{url}/version") == "200"
        assert is_on(ops.ssh(host), APP)

    again = ops.cli("maintenance", "on", "--allow", allowed, "--retry-after", "120")
    assert again.returncode == 0 and again.stdout.count("already on") == 2, again.stdout
    for host in WEB:
        [entry] = ops.history(host, "maintenance")  # the no-op is not recorded
        assert (entry["result"], entry["data"]["allow"]) == ("on", [allowed])

    off = ops.cli("maintenance", "off")
    assert off.returncode == 0, off.stdout + off.stderr
    for host in WEB:
        assert http.request(f"http://{ops.address(host)}/version").status == 200
        assert not is_on(ops.ssh(host), APP)
        assert [e["result"] for e in ops.history(host, "maintenance")] == ["on", "off"]


# -- prune ------------------------------------------------------------------------------------


RELEASE = ("d=/srv/sampleapp/releases/{name}; mkdir -p $d; "
           "printf 'app=sampleapp\\nrelease={name}\\nversion={name}\\nsha256={sha}\\n"
           "created={created}\\n' > $d/.dk-release")


def _fleet_state(ops: Ops) -> dict[str, Any]:
    with pg.connect(ops.ssh("db-1")) as session:
        databases = sorted(str(r[0]) for r in session.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'sampleapp%'").fetchall())
    return {"releases": {h: ops.sh(h, "ls /srv/sampleapp/releases") for h in WEB},
            "backups": ops.sh("db-1", "ls /var/backups/sampleapp"), "databases": databases}


def test_prune_lists_first_and_removes_only_with_yes(deployed: Ops) -> None:
    ops = deployed
    for host in WEB:  # three releases older than v1: a1 good, a2 failed, a3 good
        for created, name in ((1000, "a1"), (2000, "a2"), (3000, "a3")):
            ops.sh(host, RELEASE.format(name=name, sha="0" * 64, created=created))
        ops.sh(host, "echo 'health gate failed' > /srv/sampleapp/releases/a2/.failed")
    ops.sh("db-1", "mkdir -p /var/backups/sampleapp && cd /var/backups/sampleapp && "
                   "for i in 1 2 3 4; do echo x > sampleapp-b$i.dump; "
                   "echo s > sampleapp-b$i.dump.sha256; "
                   "touch -d \"-$((10 - i)) hours\" sampleapp-b$i.dump; done")
    with pg.connect(ops.ssh("db-1")) as session:  # set aside by two restores, both old
        session.execute('CREATE DATABASE "sampleapp_old_20250101T000000Z"')
        session.execute('CREATE DATABASE "sampleapp_old_20260101T000000Z"')

    before = _fleet_state(ops)
    listed = ops.cli("prune", "--keep", "1")
    assert listed.returncode == 0, listed.stderr
    removal = listed.stdout.split("to remove")[1]
    rows = [line.split()[:3] for line in removal.splitlines() if line.startswith("   ")]
    assert rows == [["web-1", "release", "a2"], ["web-1", "release", "a1"],
                    ["web-2", "release", "a2"], ["web-2", "release", "a1"],
                    ["db-1", "database", "sampleapp_old_20250101T000000Z"],
                    ["db-1", "backup", "sampleapp-b1.dump"],
                    ["db-1", "backup", "sampleapp-b2.dump"]]
    # the newest set-aside database is the only copy of what was written after its backup
    kept = listed.stdout.split("to remove")[0]
    assert "sampleapp_old_20260101T000000Z" in kept and "kept, and why" in kept, listed.stdout
    assert "nothing removed: run again with --yes" in listed.stdout
    assert _fleet_state(ops) == before
    assert all(ops.history(h, "prune") == [] for h in (*WEB, "db-1"))

    removed = ops.cli("prune", "--keep", "1", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    after = _fleet_state(ops)
    for host in WEB:  # v1 is current, a3 the rollback target
        assert after["releases"][host].split() == ["a3", "v1"]
        [entry] = ops.history(host, "prune")
        assert entry["result"] == "succeeded"
        assert sorted(entry["data"]["removed"]) == ["release a1", "release a2"]
    assert after["backups"].split() == ["sampleapp-b3.dump", "sampleapp-b3.dump.sha256",
                                        "sampleapp-b4.dump", "sampleapp-b4.dump.sha256"]
    assert after["databases"] == ["sampleapp", "sampleapp_old_20260101T000000Z"]
    [entry] = ops.history("db-1", "prune")
    assert "database sampleapp_old_20250101T000000Z" in entry["data"]["removed"]
    assert "nothing to prune" in ops.cli("prune", "--keep", "1").stdout
