"""Feature flags against the real Redis on db-1: the tasks (twice, check mode, undo),
the runtime API reading what the tasks wrote, and ``invoke flags.*`` end to end.

The lab Redis is test-only: FLUSHDB after every test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redispy
import yaml

from deploykit.connection import Connection
from deploykit.flags import Flag, Flags
from deploykit.result import Result, Status
from deploykit.task import Task, UndoStack
from deploykit.tasks import flags, redis
from deploykit.testing.idempotence import writes
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "db-1"
USERS = [f"user-{i}" for i in range(10_000)]


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture
def rdb(lab_connection: Callable[[str], Connection]) -> Iterator[redispy.Redis]:
    """What an app holds: a plain redis-py client (own SSH connection); flushed after."""
    with redis.connect(lab_connection(HOST)) as client:
        client.flushdb()
        yield client
        client.flushdb()




def apply_twice(conn: Connection, task: Task, undo: UndoStack | None = None) -> Result:
    """Check mode changes nothing; then ``changed``, then ``ok`` with no write."""
    mark = len(conn.log)
    checked = task.run(conn, check=True)
    assert checked.status is Status.CHANGED, checked.message
    assert writes(conn, mark) == []
    first = task.run(conn, undo=undo)
    assert first.status is Status.CHANGED, first.message
    assert first.diff == checked.diff
    mark = len(conn.log)
    second = task.run(conn)
    assert second.status is Status.OK, second.message
    assert writes(conn, mark) == []
    return first


def stored(rdb: redispy.Redis, name: str) -> dict[str, str]:
    """The flag's hash as text."""
    data: dict[bytes, bytes] = rdb.hgetall(f"deploykit:flag:{name}")  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in data.items()}


def test_flag_is_created_then_changed_with_a_diff(conn: Connection, rdb: redispy.Redis) -> None:
    create = flags.flag("beta", enabled=True, rollout=5)
    assert create.run(conn, check=True).diff == (
        "state: absent -> present\nenabled: (none) -> true\nrollout: (none) -> 5\n"
        "allow: (none) -> []\nkilled: (none) -> false")
    assert rdb.exists("deploykit:flag:beta") == 0
    apply_twice(conn, create)
    first = stored(rdb, "beta")
    assert {k: v for k, v in first.items() if k != "updated_at"} == {
        "enabled": "1", "rollout": "5", "allow": "[]", "killed": "0"}
    assert first["updated_at"].endswith("Z")

    rdb.hset("deploykit:flag:beta", "updated_at", "2000-01-01T00:00:00Z")
    wider = flags.flag("beta", enabled=True, rollout=25)
    assert apply_twice(conn, wider).diff == "rollout: 5 -> 25"
    after = stored(rdb, "beta")
    assert after["rollout"] == "25" and after["updated_at"] != "2000-01-01T00:00:00Z"
    assert writes(conn, 0) == ["redis HSET deploykit:flag:beta (+10 args)",
                               "redis HSET deploykit:flag:beta (+4 args)"]


def test_rollout_through_redis_is_monotonic(conn: Connection, rdb: redispy.Redis) -> None:
    app = Flags(rdb)
    flags.flag("search-v2", enabled=True, rollout=25).run(conn)
    at_25 = app.get("search-v2")
    assert at_25 is not None
    assert at_25 == Flag("search-v2", enabled=True, rollout=25.0, updated_at=at_25.updated_at)
    on_25 = {u for u in USERS if at_25.is_enabled(u)}
    assert abs(len(on_25) / len(USERS) * 100 - 25) <= 1.5

    assert flags.flag("search-v2", rollout=50).run(conn).diff == "rollout: 25 -> 50"
    at_50 = app.get("search-v2")
    assert at_50 is not None
    on_50 = {u for u in USERS if at_50.is_enabled(u)}
    assert on_25 < on_50 and abs(len(on_50) / len(USERS) * 100 - 50) <= 1.5
    # the per-call API reads Redis each time and agrees with the snapshot
    sample = USERS[:300]
    assert {u for u in sample if app.is_enabled("search-v2", u)} == on_50 & set(sample)


def test_kill_switch_overrides_everything_and_keeps_the_settings(
        conn: Connection, rdb: redispy.Redis) -> None:
    app = Flags(rdb)
    flags.flag("checkout", enabled=True, rollout=100, allow=["vip"]).run(conn)
    assert app.is_enabled("checkout", "anyone") and app.is_enabled("checkout", "vip")

    undo = UndoStack()
    assert apply_twice(conn, flags.kill("checkout"), undo).diff == "killed: false -> true"
    assert not any(app.is_enabled("checkout", u) for u in [*USERS[:500], "vip", None])
    assert stored(rdb, "checkout")["rollout"] == "100"  # settings kept
    # a deploy re-applying the flag's settings does not revive it
    assert flags.flag("checkout", enabled=True, rollout=100).run(conn).status is Status.OK
    assert not app.is_enabled("checkout", "vip")

    assert undo.unwind(conn) == (["restore redis hash deploykit:flag:checkout"], [])
    assert app.is_enabled("checkout", "vip")
    flags.kill("checkout").run(conn)
    assert apply_twice(conn, flags.kill("checkout", killed=False)).diff == \
        "killed: true -> false"
    assert app.is_enabled("checkout", "anyone")


def test_killing_a_missing_flag_fails_by_name(conn: Connection, rdb: redispy.Redis) -> None:
    result = flags.kill("chekout").run(conn)
    assert result.status is Status.FAILED
    assert result.message == ("flag 'chekout' does not exist (no Redis key "
                              "deploykit:flag:chekout); nothing to kill")
    assert writes(conn, 0) == [] and rdb.dbsize() == 0


def test_allow_list(conn: Connection, rdb: redispy.Redis) -> None:
    app = Flags(rdb)
    apply_twice(conn, flags.flag("pilot", enabled=True, rollout=0, allow=["alice", 42]))
    assert json.loads(stored(rdb, "pilot")["allow"]) == ["42", "alice"]
    assert app.is_enabled("pilot", "alice") and app.is_enabled("pilot", 42)
    assert not any(app.is_enabled("pilot", u) for u in USERS[:300])
    assert apply_twice(conn, flags.flag("pilot", allow=["alice"])).diff == \
        'allow: ["42", "alice"] -> ["alice"]'
    assert not app.is_enabled("pilot", 42)
    flags.flag("pilot", enabled=False).run(conn)
    assert not app.is_enabled("pilot", "alice")


def test_runtime_cache_serves_a_flag_for_max_age(conn: Connection, rdb: redispy.Redis) -> None:
    cached, fresh = Flags(rdb, max_age=60), Flags(rdb)
    flags.flag("cached", enabled=True).run(conn)
    assert cached.is_enabled("cached", "u") and fresh.is_enabled("cached", "u")
    flags.kill("cached").run(conn)
    assert cached.is_enabled("cached", "u")  # up to max_age late, as documented
    assert not fresh.is_enabled("cached", "u")
    assert not Flags(rdb, max_age=60).is_enabled("cached", "u")


def test_undo_removes_a_new_flag(conn: Connection, rdb: redispy.Redis) -> None:
    undo = UndoStack()
    flags.flag("temp", enabled=True).run(conn, undo=undo)
    assert rdb.exists("deploykit:flag:temp") == 1
    undo.unwind(conn)
    assert rdb.exists("deploykit:flag:temp") == 0


def test_list_flags_and_unreadable_redis(clean_lab: Lab, conn: Connection,
                                         rdb: redispy.Redis) -> None:
    flags.flag("b", enabled=True, rollout=10).run(conn)
    flags.flag("a", allow=["x"]).run(conn)
    rdb.set("deploykit:flagged", "not a flag")
    found = flags.list_flags(conn)
    assert [(f.name, f.enabled, f.rollout, sorted(f.allow)) for f in found] == [
        ("a", False, 100.0, ["x"]), ("b", True, 10.0, [])]
    app = Flags(rdb)
    assert app.all() == found
    clean_lab.stop_service(HOST, "redis")
    try:
        assert app.is_enabled("b", "u", default=True) is True  # outage: the default
        with pytest.raises(redis.RedisConnectError, match=r"Redis at 127\.0\.0\.1:6379 on db-1"):
            flags.list_flags(conn)
    finally:
        clean_lab.start_service(HOST, "redis")


# -- invoke flags.* end to end --------------------------------------------------------


@pytest.fixture
def invoke_flags(lab: Lab, tmp_path: Path, project_root: Path
                 ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``invoke flags.<task> ...`` against this lab's inventory, as a user would.

    The tasks file adds the collection exactly as the project's tasks.py does.
    """
    inventory = tmp_path / "lab.yml"
    inventory.write_text(yaml.safe_dump(lab.inventory()))
    (tmp_path / "tasks.py").write_text(
        "from invoke.collection import Collection\n"
        "from deploykit.cli.flags import flags_collection\n"
        "ns = Collection()\n"
        "ns.add_collection(flags_collection, 'flags')\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        task, *rest = args
        return subprocess.run(
            [sys.executable, "-m", "invoke", "-r", str(tmp_path), task, *rest,
             "--inventory", str(inventory)],
            cwd=project_root, capture_output=True, text=True, timeout=120)

    return run


def test_invoke_set_list_kill(invoke_flags: Callable[..., subprocess.CompletedProcess[str]],
                              rdb: redispy.Redis) -> None:
    made = invoke_flags("flags.set", "beta", "--enable", "--rollout", "25", "--allow", "qa,ops")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == [
        "flags.flag beta on db-1: changed", "  state: absent -> present",
        "  enabled: (none) -> true", "  rollout: (none) -> 25",
        '  allow: (none) -> ["ops", "qa"]', "  killed: (none) -> false"]
    again = invoke_flags("flags.set", "beta", "--enable", "--rollout", "25", "--allow", "qa,ops")
    assert again.stdout == "flags.flag beta on db-1: ok\n"
    check = invoke_flags("flags.set", "beta", "--rollout", "50", "--check")
    assert check.stdout.splitlines() == ["flags.flag beta on db-1: changed (check mode)",
                                         "  rollout: 25 -> 50"]
    assert stored(rdb, "beta")["rollout"] == "25"

    listed = invoke_flags("flags.list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["flag", "enabled", "rollout", "killed", "allow", "updated_at"]
    assert row.split()[:5] == ["beta", "on", "25%", "-", "ops,qa"]

    killed = invoke_flags("flags.kill", "beta")
    assert killed.stdout.splitlines() == ["flags.kill beta on db-1: changed",
                                          "  killed: false -> true"]
    assert invoke_flags("flags.list").stdout.splitlines()[1].split()[:4] == [
        "beta", "on", "25%", "KILLED"]
    assert Flags(rdb).is_enabled("beta", "qa") is False


def test_invoke_refuses_bad_input_with_one_line(
        invoke_flags: Callable[..., subprocess.CompletedProcess[str]], rdb: redispy.Redis
) -> None:
    for args, message in (
        (("flags.set", "new checkout", "--enable"), "error: invalid flag name 'new checkout'"),
        (("flags.set", "beta", "--rollout", "150"),
         "error: rollout of flag 'beta' must be from 0 to 100 (a percentage), not '150'"),
        (("flags.set", "beta", "--rollout", "lots"),
         "error: rollout of flag 'beta' must be a number from 0 to 100, not 'lots'"),
        (("flags.kill", "ghost"), "error: [host db-1, task flags.kill ghost] flag 'ghost' "
                                  "does not exist"),
    ):
        done = invoke_flags(*args)
        assert done.returncode == 1
        assert done.stderr.startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert rdb.dbsize() == 0


def test_invoke_names_the_redis_host_it_cannot_reach(
        invoke_flags: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    listed = invoke_flags("flags.list", "--host", "db-1")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1] == "(no flags)"
    done = invoke_flags("flags.list", "--host", "web-1")  # no Redis there
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: [host web-1] Redis at 127.0.0.1:6379 on web-1 (through an SSH forward) is "
        "unreachable: the connection was refused or closed on the host (is redis-server "
        "running and listening on that port?)")
