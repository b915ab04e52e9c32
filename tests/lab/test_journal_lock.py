"""The deploy lock and the history over real SSH on the lab hosts.

Each test uses its own app name (``dkjl-<random>``), so its lock and history
live in ``/var/lib/deploykit/dkjl-...`` on every host; a finalizer removes that
directory on every host (``clean_lab`` resets /srv, /var/backups and /tmp only).
Connections are fresh per test, so their logs hold only the test's commands.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from deploykit import journal
from deploykit.connection import Connection
from deploykit.errors import ConnectError, LockHeldError, TaskError
from deploykit.inventory import Inventory
from deploykit.journal import HistoryEntry, LockHolder
from deploykit.journal.hostlock import holding
from deploykit.result import Result, RunReport, Status
from deploykit.secrets import Secret
from deploykit.tasks import notify
from deploykit.testing.idempotence import writes
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]
HOSTS = ("web-1", "web-2", "db-1")


@pytest.fixture
def app(lab: Lab) -> Iterator[str]:
    """A unique app name; its state directory is removed from every host afterwards."""
    name = f"dkjl-{uuid.uuid4().hex[:8]}"
    yield name
    for host in HOSTS:
        lab.nsenter(host, ["rm", "-rf", "--", f"/var/lib/deploykit/{name}"])


def conns(ssh: Ssh, *names: str) -> list[Connection]:
    return [ssh(n) for n in names or ("web-1", "web-2")]




def holder_info(ssh: Ssh, host: str, app: str) -> journal.LockInfo | None:
    return journal.lock_status(ssh(host), app)


def test_a_deploy_locks_every_host_and_records_start_and_end(ssh: Ssh, app: str) -> None:
    fleet = conns(ssh)
    report = RunReport(run_id="d1")
    report.add(Result("web-1", "copy release", Status.CHANGED))
    report.add(Result("web-2", "copy release", Status.OK))
    with journal.fleet_lock(fleet, app, "20261125T173000Z-abc1234", version_to="v2",
                            version_from={"web-1": "v1", "web-2": "v0"},
                            strategy="rolling") as lock:
        assert lock.hosts == ["web-1", "web-2"]
        for host in ("web-1", "web-2"):
            info = holder_info(ssh, host, app)
            assert info is not None and info.holder is not None
            assert info.holder.deploy_id == "20261125T173000Z-abc1234"
            assert info.holder.pid == lock.holder.pid and info.holder.user == lock.holder.user
            assert info.age < 60 and not info.stale
        # the lock and the start entry: one write command per host
        assert [len(writes(c)) for c in fleet] == [1, 1]
        lock.end("succeeded", steps=report)
    assert [len(writes(c)) for c in fleet] == [2, 2]  # release and end entry: one more
    for host, before in (("web-1", "v1"), ("web-2", "v0")):
        assert holder_info(ssh, host, app) is None
        start, end = journal.history(ssh(host), app)
        assert (start.event, end.event) == ("start", "end")
        assert start.host == end.host == host
        assert (end.version_from, end.version_to, end.strategy) == (before, "v2", "rolling")
        assert end.result == "succeeded" and end.duration is not None and end.duration > 0
        assert end.who == lock.holder.who
    _, end1 = journal.history(ssh("web-1"), app)
    assert end1.steps["counts"] == {"ok": 0, "changed": 1, "failed": 0, "skipped": 0}
    assert end1.steps["fleet"] == {"ok": 1, "changed": 1, "failed": 0, "skipped": 0}


def test_two_concurrent_deploys_exactly_one_wins(ssh: Ssh, app: str) -> None:
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def deploy(deploy_id: str) -> None:
        fleet = conns(ssh, "web-1", "web-2", "db-1")
        for c in fleet:
            c.open()
        barrier.wait()
        try:
            with journal.fleet_lock(fleet, app, deploy_id):
                outcome[deploy_id] = "won"
                time.sleep(1.5)  # hold it while the other one tries
        except LockHeldError as exc:
            outcome[deploy_id] = str(exc)

    threads = [threading.Thread(target=deploy, args=(d,)) for d in ("race-a", "race-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcome) == ["race-a", "race-b"]
    winners = [d for d, text in outcome.items() if text == "won"]
    assert len(winners) == 1, outcome
    (loser,) = {"race-a", "race-b"} - set(winners)
    user, controller = LockHolder.for_this_process("x", app).who.split("@")
    assert outcome[loser].startswith(
        f"locked by {user}@{controller} (deploy {winners[0]}, pid ")
    assert " on db-1; held for " in outcome[loser]  # db-1: the first host by name
    for host in HOSTS:
        assert holder_info(ssh, host, app) is None
        records = journal.summarize_history(journal.history(ssh(host), app))
        assert [(r.id, r.result) for r in records] == [(winners[0], "succeeded")]


def test_an_exception_inside_releases_every_host_and_records_failed(ssh: Ssh,
                                                                    app: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), \
            journal.fleet_lock(conns(ssh), app, "d-fail"):
        raise RuntimeError("boom")
    for host in ("web-1", "web-2"):
        assert holder_info(ssh, host, app) is None
        end = journal.history(ssh(host), app)[-1]
        assert (end.event, end.result, end.message) == ("end", "failed", "boom")


def test_ctrl_c_inside_releases_every_host_and_records_aborted(ssh: Ssh, app: str) -> None:
    with pytest.raises(KeyboardInterrupt), journal.fleet_lock(conns(ssh), app, "d-int"):
        raise KeyboardInterrupt
    for host in ("web-1", "web-2"):
        assert holder_info(ssh, host, app) is None
        end = journal.history(ssh(host), app)[-1]
        assert (end.result, end.message) == ("aborted", "interrupted (Ctrl-C)")


def test_all_or_nothing_releases_what_was_taken(ssh: Ssh, app: str) -> None:
    other = LockHolder.for_this_process("other-deploy", app)
    assert journal.acquire_lock(ssh("web-2"), app, other).acquired
    web1, web2 = conns(ssh)
    with pytest.raises(LockHeldError) as info, journal.fleet_lock([web2, web1], app, "mine"):
        pytest.fail("must not get the lock")
    assert str(info.value).startswith(
        f"locked by {other.who} (deploy other-deploy, pid {other.pid}) since {other.started} "
        f"on web-2; held for ")
    assert holder_info(ssh, "web-1", app) is None  # taken, then given back
    start, end = journal.history(ssh("web-1"), app)
    assert (start.id, end.result, end.message) == (
        "mine", "aborted", "the lock could not be taken on every host")
    still = holder_info(ssh, "web-2", app)
    assert still is not None and still.holder == other  # the other deploy's lock is untouched
    assert journal.history(ssh("web-2"), app) == []


def test_when_the_first_host_is_locked_the_others_are_not_touched(ssh: Ssh, app: str) -> None:
    other = LockHolder.for_this_process("other-deploy", app)
    assert journal.acquire_lock(ssh("web-1"), app, other).acquired
    web1, web2 = conns(ssh)
    with pytest.raises(LockHeldError, match=" on web-1; "), \
            journal.fleet_lock([web1, web2], app, "mine"):
        pass
    assert web2.log == []


def test_an_unreachable_host_releases_the_others_and_raises_its_error(
        ssh: Ssh, app: str, lab: Lab, lab_inventory: Inventory) -> None:
    dead = lab.unused_address()  # in the lab's network, nobody there
    ghost = dataclasses.replace(lab_inventory.host("web-2"), name="zz-ghost", address=dead)
    web1 = ssh("web-1")
    with pytest.raises(ConnectError, match=rf"cannot reach {re.escape(dead)}:22"), \
            journal.fleet_lock([Connection(ghost, connect_timeout=2), web1], app, "d-ghost"):
        pytest.fail("must not get the lock")
    assert holder_info(ssh, "web-1", app) is None
    assert [(e.event, e.result) for e in journal.history(web1, app)] == [
        ("start", None), ("end", "aborted")]


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_taken_lock(
        lab: Lab, ssh: Ssh, app: str) -> None:
    state = f"/var/lib/deploykit/{app}"
    lab.nsenter("web-1", ["mkdir", "-p", state])
    lab.nsenter("web-1", ["mount", "-t", "tmpfs", "-o", "size=64k", "dkjl-full", state])
    try:
        web1 = ssh("web-1")
        web1.run(f"dd if=/dev/zero of={state}/fill bs=4k 2>/dev/null || :")
        with pytest.raises(TaskError) as info, journal.fleet_lock([web1], app, "d-full"):
            pytest.fail("must not get the lock")
        leftovers = web1.run(["ls", "-A", state]).stdout.split()
    finally:
        lab.nsenter("web-1", ["umount", state])
    assert str(info.value) == (f"[host web-1, task lock] cannot take the deploy lock under "
                               f"{state}: cannot write {state}/lock/holder.json (disk full?)")
    assert "lock" not in leftovers


def backdate(ssh: Ssh, host: str, app: str, seconds: int) -> None:
    conn = ssh(host)
    when = int(conn.run("date +%s", write=False).stdout) - seconds
    conn.run(["touch", "-d", f"@{when}", f"/var/lib/deploykit/{app}/lock/holder.json"])


def crashed_holder(deploy_id: str, app: str) -> LockHolder:
    """A holder of this controller whose process is gone (a crashed deploy)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return dataclasses.replace(LockHolder.for_this_process(deploy_id, app), pid=proc.pid)


def test_a_stale_lock_is_reported_not_broken_then_broken_on_request(ssh: Ssh,
                                                                    app: str) -> None:
    crashed = crashed_holder("crashed-deploy", app)
    start = HistoryEntry(event="start", id="crashed-deploy", app=app, host="web-1")
    assert journal.acquire_lock(ssh("web-1"), app, crashed, entries=[start]).acquired
    backdate(ssh, "web-1", app, 2 * 3600 + 5)

    with pytest.raises(LockHeldError) as info, \
            journal.fleet_lock(conns(ssh, "web-1"), app, "new-deploy", ttl=3600):
        pass
    assert "(deploy crashed-deploy, pid" in str(info.value)
    assert "STALE: held for 2.0 h, longer than the lock TTL of 60 min" in str(info.value)
    kept = holder_info(ssh, "web-1", app)
    assert kept is not None and kept.holder == crashed and kept.stale

    with journal.fleet_lock(conns(ssh, "web-1"), app, "new-deploy", ttl=3600,
                            break_lock=True) as lock:
        (broken,) = lock.broken
        assert broken.holder == crashed and broken.age >= 7200
    assert holder_info(ssh, "web-1", app) is None
    entries = journal.history(ssh("web-1"), app)
    assert [(e.event, e.id) for e in entries] == [
        ("start", "crashed-deploy"), ("lock_broken", "new-deploy"), ("start", "new-deploy"),
        ("end", "new-deploy")]
    record = entries[1]
    assert record.data["previous"]["deploy_id"] == "crashed-deploy"
    assert "token" not in record.data["previous"]
    assert record.data["age"] >= 7200 and record.data["stale"] is True
    assert record.who == lock.holder.who
    crashed_record = journal.summarize_history(entries)[0]
    assert crashed_record.id == "crashed-deploy" and crashed_record.running_or_crashed


def test_break_lock_does_not_break_a_fresh_lock(ssh: Ssh, app: str) -> None:
    live = LockHolder.for_this_process("live-deploy", app)
    assert journal.acquire_lock(ssh("web-1"), app, live).acquired
    with pytest.raises(LockHeldError) as info, \
            journal.fleet_lock(conns(ssh, "web-1"), app, "impatient", break_lock=True):
        pass
    assert "STALE" not in str(info.value) and "(deploy live-deploy," in str(info.value)
    kept = holder_info(ssh, "web-1", app)
    assert kept is not None and kept.holder == live


def test_a_live_holders_lock_is_never_broken_however_old(ssh: Ssh, app: str) -> None:
    """issue 16 item 4 / issue 21 item 2: the lock of a process alive on this controller
    (a deploy longer than the TTL, or a host clock jump) is neither broken by break_lock
    nor removed by unlock --force; a lock dated in the future is stale."""
    alive = LockHolder.for_this_process("long-deploy", app)
    assert journal.acquire_lock(ssh("web-1"), app, alive).acquired
    backdate(ssh, "web-1", app, 3 * 3600)
    with holding(alive):  # this process's deploy is still running
        with pytest.raises(LockHeldError, match=r"running on this controller: a live lock "
                                                r"is never broken"):
            with journal.fleet_lock(conns(ssh, "web-1"), app, "breaker", ttl=3600,
                                    break_lock=True):
                pass
        with pytest.raises(LockHeldError, match="running on this controller"):
            journal.unlock(ssh("web-1"), app, force=True)
        kept = holder_info(ssh, "web-1", app)
        assert kept is not None and kept.holder == alive
    # that deploy is over, the lock it could not release stays behind: no longer live
    assert journal.unlock(ssh("web-1"), app, force=True) is not None
    assert holder_info(ssh, "web-1", app) is None
    ahead = crashed_holder("ahead", app)
    assert journal.acquire_lock(ssh("web-1"), app, ahead).acquired
    backdate(ssh, "web-1", app, -3 * 3600)  # taken by a clock three hours ahead
    info = holder_info(ssh, "web-1", app)
    assert info is not None and info.stale and "in the future" in info.describe()
    with journal.fleet_lock(conns(ssh, "web-1"), app, "breaker", ttl=3600,
                            break_lock=True) as lock:
        assert [b.holder for b in lock.broken] == [ahead]


def test_unlock_needs_force_or_the_holders_deploy_id(ssh: Ssh, app: str) -> None:
    conn = ssh("web-1")
    assert journal.unlock(conn, app) is None  # nothing to unlock
    crashed = crashed_holder("crashed-1", app)
    journal.acquire_lock(conn, app, crashed)
    with pytest.raises(LockHeldError, match="not removed: pass force=True"):
        journal.unlock(conn, app)
    assert holder_info(ssh, "web-1", app) is not None
    removed = journal.unlock(conn, app, deploy_id="crashed-1")
    assert removed is not None and removed.holder == crashed
    journal.acquire_lock(conn, app, crashed_holder("crashed-2", app))
    forced = journal.unlock(conn, app, force=True)
    assert forced is not None and forced.holder is not None
    assert forced.holder.deploy_id == "crashed-2"
    assert holder_info(ssh, "web-1", app) is None
    assert [(e.event, e.data["how"], e.data["previous"]["deploy_id"])
            for e in journal.history(conn, app)] == [
        ("unlock", "unlock", "crashed-1"), ("unlock", "unlock --force", "crashed-2")]


def test_history_round_trip_over_ssh_is_redacted_and_read_only(ssh: Ssh, app: str) -> None:
    conn = ssh("db-1")
    password = Secret("pg-pw-7c1d9e")
    conn.secrets.add(password)
    entries = [HistoryEntry(event="start", id=f"d{i}", app=app, host="db-1",
                            message=f"naïve 'quotes' \"double\" $HOME `id` ; {i}\nsecond line")
               for i in range(5)]
    entries.append(HistoryEntry(event="end", id="d4", app=app, host="db-1", result="failed",
                                message="psql: password pg-pw-7c1d9e rejected"))
    journal.append_history(conn, app, entries)
    assert all("pg-pw-7c1d9e" not in e.command for e in conn.log)
    before = len(conn.log)
    back = journal.history(conn, app, limit=3)
    assert writes(conn, before) == [] and len(conn.log) == before + 1
    assert [(e.event, e.id) for e in back] == [("start", "d3"), ("start", "d4"), ("end", "d4")]
    assert back[0].message == "naïve 'quotes' \"double\" $HOME `id` ; 3\nsecond line"
    assert back[2].message == "psql: password ******** rejected"
    raw = ssh("db-1").run(["cat", f"/var/lib/deploykit/{app}/history.jsonl"]).stdout
    assert "pg-pw-7c1d9e" not in raw and len(raw.splitlines()) == 6


def test_unreachable_notifications_never_block_a_locked_deploy(ssh: Ssh, app: str) -> None:
    """A down receiver (closed port) and a mute one (accepts, never answers) during a real
    locked deploy: each send returns within the timeout, the deploy still succeeds."""
    with socket.socket() as mute, socket.socket() as probe:
        mute.bind(("127.0.0.1", 0))
        mute.listen()  # the kernel accepts the connection; nobody ever answers
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]
        probe.close()
        notifier = notify.Notifier(
            [notify.webhook(f"http://127.0.0.1:{down}/deploys"),
             notify.slack(Secret(f"http://127.0.0.1:{mute.getsockname()[1]}/services/T/B/x"))],
            timeout=1.0)
        fleet = conns(ssh)
        sent: list[notify.NotifyResult] = []
        with journal.fleet_lock(fleet, app, "d-notify", version_to="v2") as lock:
            for kind in ("start", "success"):
                started = time.monotonic()
                event = notify.DeployEvent(kind, lock.deploy_id, app, version="v2",
                                           hosts=lock.hosts)
                sent += notifier.send(event)
                assert time.monotonic() - started < 2.0
            lock.end("succeeded", steps={"notifications": [r.to_result().message
                                                           for r in sent]})
    assert [(r.target, r.ok) for r in sent] == [("webhook", False), ("slack", False)] * 2
    assert sent[1].message == "no answer within 1 s"
    for host in ("web-1", "web-2"):
        end = journal.history(ssh(host), app)[-1]
        assert end.result == "succeeded"
        assert end.steps["notifications"][0].startswith("warning: notification not delivered")
        assert "/services/T/B/x" not in repr(end)


@pytest.fixture
def ssh(lab_connection: Ssh) -> Ssh:
    return lab_connection
