"""The pipeline's seams through the real CLI on the lab: the one lock API (issue 21 items
1, 2, 11; issue 16's lock seams; issue 17 item 9) and refusals before changes (issue 17
items 12, 15).

A ``pre_deploy`` hook that waits for a file (only when ``DK_PAUSE`` is set) holds a real
``invoke deploy`` inside its lock for as long as a test needs: meanwhile the test ages the
lock as a clock jump would, tries ``--break-lock``, impersonates a nested run with the
deploy's id alone, breaks the lock behind the deploy's back, and makes a host's history
unwritable. Every assertion reads the hosts (nginx, links, the journal, the lock).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pipeline import APP, HOSTS, WEB, Pipeline, deploy_id, error_lines, pipeline

from deploykit import journal
from deploykit.testing.load import LoadLoop

pytestmark = pytest.mark.lab
__all__ = ["pipeline"]

LOCK = f"/var/lib/deploykit/{APP}/lock"
BACKUPS = f"/var/backups/{APP}"
PAUSE_HOOK = """#!/bin/sh
[ -z "$DK_TRACE" ] || echo "$DEPLOYKIT_HOOK $DEPLOYKIT_DEPLOY_ID" >> "$DK_TRACE"
[ -n "$DK_PAUSE" ] || exit 0
touch "$DK_PAUSE.waiting"
i=0
while [ ! -e "$DK_PAUSE" ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
"""


@pytest.fixture(scope="module")
def fleet(pipeline: Pipeline) -> Iterator[Pipeline]:
    """v1 on both web hosts; a pausing pre_deploy hook; a one-minute lock TTL (so the
    heartbeat beats every 20 s)."""
    pipeline.base["lock_ttl_minutes"] = 1
    pipeline.config()
    hooks = pipeline.root / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "pre_deploy").write_text(PAUSE_HOOK)
    (hooks / "pre_deploy").chmod(0o755)
    pipeline.ensure("v1")
    yield pipeline


@pytest.fixture(autouse=True)
def no_lock_left(fleet: Pipeline) -> Iterator[None]:
    """A test that fails half-way leaves no lock behind for the next."""
    yield
    on_hosts(fleet, f"rm -rf {LOCK}")


def holder_json(deploy_id: str, token: str) -> str:
    """A holder.json as another controller's deploykit writes it (its process is not ours)."""
    return json.dumps({"user": "ops", "controller": "elsewhere", "deploy_id": deploy_id,
                       "pid": 1, "started": "2026-01-01T00:00:00Z", "token": token},
                      separators=(",", ":"), sort_keys=True)


def release_state(p: Pipeline, host: str) -> str:
    """Releases, links, nginx and programs of ``host`` (not the journal: a run writes it)."""
    script = ("find /srv /etc/nginx/conf.d /etc/supervisor/conf.d -printf '%p %y %s %T@ %l\\n' "
              "2>/dev/null | sort; supervisorctl -c /etc/supervisor/supervisord.conf status "
              "2>/dev/null | awk '{print $1, $2}'")
    return p.lab.nsenter(host, ["sh", "-c", script]).stdout


def start_paused(p: Pipeline, *args: str, name: str = "go") -> tuple[subprocess.Popen[str], Path]:
    """``invoke deploy ARGS`` held in its pre_deploy hook (inside the lock) until the
    returned file is created."""
    gate = p.root / name
    gate.unlink(missing_ok=True)
    Path(f"{gate}.waiting").unlink(missing_ok=True)
    argv, env = p.command("deploy", "--yes", *args)
    proc = subprocess.Popen(argv, cwd=p.project_root, env={**env, "DK_PAUSE": str(gate)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not Path(f"{gate}.waiting").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the deploy never reached its pre_deploy hook"
        time.sleep(0.2)
    return proc, gate


def finish(proc: subprocess.Popen[str], gate: Path) -> tuple[int, str, str]:
    gate.touch()
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def holder(p: Pipeline, host: str) -> journal.LockInfo | None:
    return journal.lock_status(p.ssh(host), APP, ttl=60)


def on_hosts(p: Pipeline, script: str, hosts: tuple[str, ...] = HOSTS) -> None:
    for host in hosts:
        done = p.lab.nsenter(host, ["sh", "-c", script])
        assert done.returncode == 0, done.stderr


def backups(p: Pipeline) -> list[str]:
    found = p.lab.nsenter("db-1", ["sh", "-c", f"ls {BACKUPS} 2>/dev/null || :"]).stdout
    return sorted(found.split())


def test_check_mode_lists_the_pending_migrations(fleet: Pipeline) -> None:
    before = {h: release_state(fleet, h) for h in HOSTS}
    done = fleet.deploy("--version", "v2", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"1 pending migration\(s\): 0002\S*", done.stdout), done.stdout
    assert {h: release_state(fleet, h) for h in HOSTS} == before


def test_bluegreen_release_story_under_load_then_rollback_to_what_served_before(
        fleet: Pipeline) -> None:
    """bluegreen x release through invoke: v1 -> v2 under a bounded load loop with no failed
    request, a broken version that never takes traffic, then `invoke rollback` (no --to)
    back to what served before v2; status, history and verify tell the truth after each."""
    urls = [f"http://{fleet.address(h)}/version" for h in WEB]
    with LoadLoop(urls, threads=2, pause=0.05, max_seconds=280) as load:
        done = fleet.deploy("--version", "v2")
        assert done.returncode == 0, done.stdout + done.stderr
        broken = fleet.deploy("--version", "v3-broken")
        assert broken.returncode == 1
    assert load.stats.errors == 0, load.stats.summary()
    assert set(load.stats.versions) <= {"v1", "v2"}, load.stats.summary()
    assert [fleet.serving(h) for h in WEB] == ["v2", "v2"]
    rows = json.loads(fleet.cli("status", "--json", "-").stdout)
    assert [(r["name"], r["version"]) for r in rows if r["role"] == "web"] == \
        [("web-1", "v2"), ("web-2", "v2")]
    history = json.loads(fleet.cli("history", "--json", "-", "--limit", "2").stdout)
    assert [(r["version_to"], r["result"]) for r in history] == \
        [("v2", "succeeded"), ("v3-broken", "failed")]
    back = fleet.cli("rollback", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert [fleet.serving(h) for h in WEB] == ["v1", "v1"]
    assert fleet.cli("verify").returncode == 0
    last = json.loads(fleet.cli("history", "--json", "-", "--limit", "1").stdout)[-1]
    assert (last["kind"], last["version_to"], last["result"]) == ("rollback", "v1", "succeeded")
    assert set(last["version_from"].values()) == {"v2"}


def test_a_live_deploy_keeps_its_lock_against_break_lock_impostors_and_clock_jumps(
        fleet: Pipeline) -> None:
    proc, gate = start_paused(fleet, "--version", "v2")
    try:
        info = holder(fleet, "web-1")
        assert info is not None and info.holder is not None
        running = info.holder.deploy_id
        # a process that knows the running deploy's id (invoke status shows it) is not
        # nested in it: it must hold the token only the deploy's hooks receive
        impostor = fleet.deploy("--version", "v2", extra_env={"DEPLOYKIT_DEPLOY_ID": running})
        assert impostor.returncode == 1
        assert re.match(rf"error: locked by \S+ \(deploy {running}, ",
                        error_lines(impostor.stderr)[0]), impostor.stderr
        # the lock aged by a clock jump (or a deploy longer than lock_ttl_minutes): still
        # not breakable while its holder runs on this controller
        on_hosts(fleet, f"touch -d '3 hours ago' {LOCK}/holder.json")
        breaker = fleet.deploy("--version", "v2", "--break-lock")
        assert breaker.returncode == 1
        [line] = error_lines(breaker.stderr)
        assert f"(deploy {running}, " in line and "running on this controller" in line, line
        for host in HOSTS:
            found = holder(fleet, host)
            assert found is not None and found.holder is not None
            assert found.holder.deploy_id == running
        # the heartbeat brings the lock's age back (every 20 s with a 1-minute TTL)
        deadline = time.monotonic() + 60
        while any((i := holder(fleet, h)) is None or i.age > 50 for h in HOSTS):
            assert time.monotonic() < deadline, "the lock was never refreshed"
            time.sleep(2)
    finally:
        code, out, err = finish(proc, gate)
    assert code == 0, out + err
    assert deploy_id(out) == running
    assert [fleet.serving(h) for h in WEB] == ["v2", "v2"]
    for host in HOSTS:
        assert holder(fleet, host) is None
        end = fleet.history(host)[-1]
        assert (end["event"], end["id"], end["result"]) == ("end", running, "succeeded")


def test_the_victim_of_a_broken_lock_stops_before_its_next_change_and_says_so(
        fleet: Pipeline) -> None:
    before = {h: release_state(fleet, h) for h in WEB}
    proc, gate = start_paused(fleet, "--version", "v1")
    foreign = holder_json("other-7", "t" * 32)
    try:  # broken and taken by another controller's deploy while ours waits in its hook
        on_hosts(fleet, f"rm -rf {LOCK} && mkdir {LOCK} && printf '%s\\n' '{foreign}' > "
                        f"{LOCK}/holder.json", ("web-1",))
    finally:
        code, out, err = finish(proc, gate)
    try:
        assert code == 1, out + err
        [line] = error_lines(err)
        assert "lock of" in line and "was broken while it ran" in line and "other-7" in line
        assert "stopped before its next change" in line, line
        assert [fleet.serving(h) for h in WEB] == ["v2", "v2"]  # nothing was changed
        assert {h: release_state(fleet, h) for h in WEB} == before
        info = holder(fleet, "web-1")  # the other deploy's lock is left alone
        assert info is not None and info.holder is not None
        assert info.holder.deploy_id == "other-7"
    finally:
        on_hosts(fleet, f"rm -rf {LOCK}", ("web-1",))


def test_a_lock_from_a_clock_ahead_is_stale_and_breakable(fleet: Pipeline) -> None:
    dead = holder_json("ahead-3", "a" * 32)
    on_hosts(fleet, f"mkdir -p {LOCK} && printf '%s\\n' '{dead}' > {LOCK}/holder.json && "
                    f"touch -d '+3 hours' {LOCK}/holder.json")
    status = fleet.cli("status", "--json", "-")
    rows = json.loads(status.stdout)
    assert all("in the future" in r["lock"] and "STALE" in r["lock"] for r in rows), rows
    done = fleet.deploy("--version", "v2", "--break-lock")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broke a stale lock" in done.stdout
    assert all(holder(fleet, h) is None for h in HOSTS)


def test_a_history_end_entry_that_cannot_be_written_keeps_the_lock_and_says_so(
        fleet: Pipeline) -> None:
    state = f"/var/lib/deploykit/{APP}"
    proc, gate = start_paused(fleet, "--version", "v2")
    try:
        on_hosts(fleet, f"mv {state}/history.jsonl {state}/history.keep && "
                        f"mkdir {state}/history.jsonl", ("db-1",))
    finally:
        code, out, err = finish(proc, gate)
    try:
        assert code == 1, out + err
        assert "lock is KEPT" in err and "db-1" in err, err
        info = holder(fleet, "db-1")
        assert info is not None and info.holder is not None
        assert holder(fleet, "web-1") is None
    finally:
        on_hosts(fleet, f"rmdir {state}/history.jsonl && mv {state}/history.keep "
                        f"{state}/history.jsonl", ("db-1",))
    done = fleet.cli("unlock")
    assert done.returncode == 0, done.stdout + done.stderr
    assert holder(fleet, "db-1") is None


def test_a_queued_deploy_interrupted_after_the_lock_keeps_what_the_other_deployed(
        fleet: Pipeline) -> None:
    """issue 21 item 1: B waits for the lock while another run changes the fleet (here a
    rollback v2 -> v1, nested in the lock this test holds); B gets the lock and is
    interrupted at once: it must leave what the other run left serving (old code put
    back the v2 it had read before waiting)."""
    assert [fleet.serving(h) for h in WEB] == ["v2", "v2"]
    conns = [fleet.ssh(h) for h in HOSTS]
    token = "nest-" + "9" * 27
    argv, env = fleet.command("deploy", "--yes", "--version", "v2", "--lock-wait", "5m")
    with journal.fleet_lock(conns, APP, "other-run-1", nest_token=token) as lock:
        waiting = subprocess.Popen(argv, cwd=fleet.project_root, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiting.stdout is not None
        seen = ""
        for text in waiting.stdout:  # B has read the fleet (v2) and waits for the lock
            seen += text
            if text.startswith("== lock"):
                break
        other = fleet.cli("rollback", "--yes", extra_env={
            "DEPLOYKIT_DEPLOY_ID": "other-run-1", "DEPLOYKIT_LOCK_TOKEN": token})
        assert other.returncode == 0, other.stdout + other.stderr
        lock.end("succeeded")
    assert [fleet.serving(h) for h in WEB] == ["v1", "v1"]
    for text in waiting.stdout:  # the queued deploy gets the lock; one Ctrl-C right then
        seen += text
        if " locked on " in text:
            waiting.send_signal(signal.SIGINT)
            break
    out, err = waiting.communicate(timeout=300)
    out = seen + out
    assert waiting.returncode == 130, out + err
    assert [fleet.serving(h) for h in WEB] == ["v1", "v1"]
    for host in WEB:
        current = fleet.lab.nsenter(host, ["readlink", f"/srv/{APP}/current"]).stdout
        assert current.strip().endswith("/v1"), current
    did = deploy_id(out)
    for host in WEB:
        end = [e for e in fleet.history(host) if e["id"] == did and e["event"] == "end"]
        assert end and end[-1]["result"] == "aborted"
        assert end[-1]["version_from"] == "v1"  # what served when it had the lock


def test_split_colours_are_refused_before_backup_and_hooks_and_a_noop_takes_no_backup(
        fleet: Pipeline) -> None:
    assert [fleet.serving(h) for h in WEB] == ["v1", "v1"]
    moved = fleet.deploy("--host", "web-2", "--version", "v2")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    kept = backups(fleet)
    trace = fleet.root / "trace"
    trace.unlink(missing_ok=True)
    done = fleet.deploy("--version", "v2", extra_env={"DK_TRACE": str(trace)})
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert "active colours differ across the fleet" in line, line
    assert line.endswith("; nothing was changed"), line
    assert backups(fleet) == kept  # no backup taken
    assert not trace.exists()  # no pre_deploy hook ran
    assert [fleet.serving(h) for h in WEB] == ["v1", "v2"]
    # the fleet made whole on v2; deploying v2 again changes nothing and backs nothing up
    fleet.ensure("v2")
    kept = backups(fleet)
    again = fleet.deploy("--version", "v2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no backup: v2 already serves everywhere" in again.stdout
    assert backups(fleet) == kept
