"""Redis tasks against the real Redis on db-1, through an SSH forward (or direct).

Every task runs in check mode first (nothing written), then twice: ``changed``,
then ``ok`` with no write command (Redis commands are in the connection's log,
marked read or write). State is read back with a separate redis-py client over
a second connection. The lab Redis is test-only: FLUSHDB after every test.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis as redispy

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.result import Status
from deploykit.runner import Runner
from deploykit.secrets import Secret
from deploykit.task import UndoStack
from deploykit.tasks import redis
from deploykit.testing.idempotence import assert_check_mode as check
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.idempotence import writes
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "db-1"
FORWARDED = "127.0.0.1:6379 on db-1 (through an SSH forward)"
REFUSED = ("the connection was refused or closed on the host (is redis-server running and "
           "listening on that port?)")


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    """A fresh connection per test: its log holds only this test's commands."""
    return lab_connection(HOST)


@pytest.fixture
def rdb(lab_connection: Callable[[str], Connection]) -> Iterator[redispy.Redis]:
    """A plain redis-py client on db-1's Redis (its own SSH connection), flushed after."""
    with redis.connect(lab_connection(HOST)) as client:
        client.flushdb()
        yield client
        client.flushdb()








# -- key ------------------------------------------------------------------------------


def test_key_is_set_once_then_left_alone(conn: Connection, rdb: redispy.Redis) -> None:
    task = redis.key("app:mode", "blue")
    assert check(conn, task).diff == "state: absent -> present\nvalue: (none) -> 'blue'"
    assert rdb.exists("app:mode") == 0
    first = apply_twice(conn, task)
    assert first.diff == "state: absent -> present\nvalue: (none) -> 'blue'"
    assert rdb.get("app:mode") == b"blue" and rdb.ttl("app:mode") == -1
    assert writes(conn, 0) == ["redis SET app:mode (+1 args)"]

    green = redis.key("app:mode", "green")
    assert check(conn, green).diff == "value: 'blue' -> 'green'"
    apply_twice(conn, green)
    assert rdb.get("app:mode") == b"green"


def test_key_ttl_is_set_and_removed(conn: Connection, rdb: redispy.Redis) -> None:
    rdb.set("app:banner", "hi")
    with_ttl = redis.key("app:banner", "hi", ttl=300)
    assert apply_twice(conn, with_ttl).diff == "ttl: (none) -> 300s"
    assert 0 < rdb.ttl("app:banner") <= 300
    assert writes(conn, 0) == ["redis EXPIRE app:banner (+1 args)"]

    mark = len(conn.log)
    forever = redis.key("app:banner", "hi")
    assert apply_twice(conn, forever).diff.startswith("ttl: 30")
    assert rdb.ttl("app:banner") == -1
    assert writes(conn, mark) == ["redis PERSIST app:banner"]

    new_value = redis.key("app:banner", "bye", ttl=60)
    assert apply_twice(conn, new_value).diff == "value: 'hi' -> 'bye'\nttl: (none) -> 60s"
    assert rdb.get("app:banner") == b"bye" and 0 < rdb.ttl("app:banner") <= 60


def test_key_replaces_another_type_and_undo_restores_it(conn: Connection,
                                                        rdb: redispy.Redis) -> None:
    rdb.hset("app:cfg", mapping={"a": "1"})
    rdb.expire("app:cfg", 500)
    undo = UndoStack()
    assert apply_twice(conn, redis.key("app:cfg", "flat"), undo).diff == (
        "type: hash -> string\nvalue: (none) -> 'flat'\nttl: 500s -> (none)")
    assert rdb.get("app:cfg") == b"flat"
    assert undo.unwind(conn) == (["restore redis key app:cfg"], [])
    assert rdb.hgetall("app:cfg") == {b"a": b"1"} and 490 < rdb.ttl("app:cfg") <= 500


def test_undo_deletes_a_key_that_did_not_exist(conn: Connection, rdb: redispy.Redis) -> None:
    undo = UndoStack()
    apply_twice(conn, redis.key("app:new", 42), undo)
    assert rdb.get("app:new") == b"42"
    undo.unwind(conn)
    assert rdb.exists("app:new") == 0


def test_secret_values_never_show(conn: Connection, rdb: redispy.Redis) -> None:
    task = redis.key("app:token", Secret("s3cr3t-value"))
    result = apply_twice(conn, task)
    assert result.diff == "state: absent -> present\nvalue: (none) -> ********"
    assert rdb.get("app:token") == b"s3cr3t-value"
    assert not any("s3cr3t" in entry.command for entry in conn.log)
    rotated = redis.key("app:token", Secret("other-value"))
    assert check(conn, rotated).diff == "value: ******** -> ********"


# -- hash -----------------------------------------------------------------------------


def test_hash_sets_only_the_fields_that_differ(conn: Connection, rdb: redispy.Redis) -> None:
    task = redis.hash("app:limits", {"rpm": 600, "burst": "50"})
    assert check(conn, task).diff == ("state: absent -> present\nfield rpm: (none) -> '600'\n"
                                      "field burst: (none) -> '50'")
    apply_twice(conn, task)
    assert rdb.hgetall("app:limits") == {b"rpm": b"600", b"burst": b"50"}

    rdb.hset("app:limits", "owner", "ops")
    more = redis.hash("app:limits", {"rpm": 900, "burst": "50"})
    assert apply_twice(conn, more).diff == "field rpm: '600' -> '900'"
    assert rdb.hgetall("app:limits") == {b"rpm": b"900", b"burst": b"50", b"owner": b"ops"}

    exact = redis.hash("app:limits", {"rpm": 900, "burst": "50"}, exact=True)
    assert apply_twice(conn, exact).diff == "field owner: 'ops' -> (none)"
    assert rdb.hgetall("app:limits") == {b"rpm": b"900", b"burst": b"50"}


def test_hash_undo_restores_the_previous_hash(conn: Connection, rdb: redispy.Redis) -> None:
    rdb.set("app:limits", "not a hash")
    undo = UndoStack()
    first = apply_twice(conn, redis.hash("app:limits", {"rpm": 1}), undo)
    assert first.diff == "type: string -> hash\nfield rpm: (none) -> '1'"
    assert rdb.hgetall("app:limits") == {b"rpm": b"1"}
    assert undo.unwind(conn) == (["restore redis hash app:limits"], [])
    assert rdb.get("app:limits") == b"not a hash"


# -- invalidation ---------------------------------------------------------------------


def test_invalidation_deletes_exactly_the_matching_keys_in_batches(
        conn: Connection, rdb: redispy.Redis) -> None:
    pipe = rdb.pipeline(transaction=False)
    for i in range(1500):
        pipe.set(f"cache:page:{i}", i)
    for i in range(300):
        pipe.set(f"cache:user:{i}", i)
        pipe.set(f"session:{i}", i)
    pipe.set("cache:pages", "no colon after pages: not matched")
    pipe.execute()
    survivors = {k for k in rdb.scan_iter(count=1000) if not k.startswith(b"cache:page:")}
    assert len(survivors) == 601

    task = redis.invalidate("cache:page:*", batch=500)
    assert check(conn, task).diff == "keys matching 'cache:page:*': 1500 -> 0"
    assert rdb.dbsize() == 2101
    mark = len(conn.log)
    first = apply_twice(conn, task)
    assert first.data == {"matching": 1500, "unlinked": 1500}
    unlinks = writes(conn, mark)
    assert unlinks == ["redis UNLINK (500 keys)"] * 3
    commands = {e.command.split()[1] for e in conn.log}
    assert commands == {"SCAN", "UNLINK"}  # never KEYS
    assert set(rdb.scan_iter(count=1000)) == survivors


def test_invalidation_of_nothing_is_ok(conn: Connection, rdb: redispy.Redis) -> None:
    result = redis.invalidate("nothing:*").run(conn)
    assert result.status is Status.OK and result.data == {"matching": 0}
    assert writes(conn, 0) == []


# -- checks ---------------------------------------------------------------------------


def test_check_passes_and_reports_info(conn: Connection, rdb: redispy.Redis) -> None:
    result = redis.check(role="master", max_memory="1gb", max_clients=1000,
                         min_clients=1).run(conn)
    assert result.status is Status.OK, result.message
    assert result.data["role"] == "master"
    assert 0 < result.data["used_memory"] < 1024**3
    assert result.data["connected_clients"] >= 1  # this check itself at least
    assert redis.ping().run(conn).status is Status.OK
    assert writes(conn, 0) == []


def test_check_fails_naming_every_threshold_missed(conn: Connection,
                                                   rdb: redispy.Redis) -> None:
    result = redis.check(role="replica", max_memory="1kb", max_clients=1).run(conn)
    assert result.status is Status.FAILED
    clients = int(rdb.info("clients")["connected_clients"])
    assert result.message.startswith(f"Redis at {FORWARDED}: role is master, expected "
                                     f"replica; used_memory ")
    assert "MiB is over the limit 1.0 KiB; connected_clients " in result.message
    assert result.message.endswith("is over the limit 1")
    assert clients >= 1
    low = redis.check(min_clients=10_000).run(conn)
    assert low.status is Status.FAILED
    assert low.message.endswith("is under the minimum 10000")


def test_wait_ready_returns_at_once_when_redis_answers(conn: Connection,
                                                       rdb: redispy.Redis) -> None:
    result = redis.wait_ready(timeout=5).run(conn)
    assert result.status is Status.OK and result.data["waited"] < 1


def test_bad_arguments_are_config_errors() -> None:
    from deploykit.errors import ConfigError
    with pytest.raises(ConfigError, match="ttl must be a positive"):
        redis.key("k", "v", ttl=0)
    with pytest.raises(ConfigError, match="memory size '12 parsecs'"):
        redis.check(max_memory="12 parsecs")
    with pytest.raises(ConfigError, match="role must be"):
        redis.check(role="leader")
    with pytest.raises(ConfigError, match="non-empty glob"):
        redis.invalidate("")
    with pytest.raises(ConfigError, match="mapping is empty"):
        redis.hash("h", {})


# -- reaching Redis -------------------------------------------------------------------


def test_unreachable_redis_is_one_clear_message(clean_lab: Lab, conn: Connection) -> None:
    clean_lab.stop_service(HOST, "redis")
    try:
        for task in (redis.key("app:mode", "blue"), redis.check(), redis.invalidate("x:*")):
            result = task.run(conn)
            assert result.status is Status.FAILED
            assert result.message == f"Redis at {FORWARDED} is unreachable: {REFUSED}"
        waited = redis.wait_ready(timeout=1).run(conn)
        assert waited.status is Status.FAILED
        assert waited.message == f"Redis at {FORWARDED} not ready within 1 s: {REFUSED}"

        starter = threading.Timer(1.0, clean_lab.start_service, (HOST, "redis"))
        starter.start()
        started = time.monotonic()
        ready = redis.wait_ready(timeout=30).run(conn)
        starter.join()
        assert ready.status is Status.OK, ready.message
        assert 0.9 < time.monotonic() - started < 30
        assert ready.data["waited"] >= 0.9
    finally:
        clean_lab.start_service(HOST, "redis")


def test_direct_connection_from_host_vars(clean_lab: Lab, lab_inventory: Inventory,
                                          rdb: redispy.Redis) -> None:
    base = lab_inventory.host(HOST)
    host = dataclasses.replace(base, vars={**base.vars, "redis_direct": True})
    with Connection(host) as direct:
        apply_twice(direct, redis.key("app:direct", "yes"))
        assert rdb.get("app:direct") == b"yes"
        clean_lab.stop_service(HOST, "redis")
        try:
            failed = redis.key("app:direct", "no").run(direct)
        finally:
            clean_lab.start_service(HOST, "redis")
    assert failed.status is Status.FAILED
    assert failed.message.startswith(f"Redis at {base.address}:6379 (db-1, direct) is "
                                     f"unreachable: ")
    assert failed.message.endswith("Connection refused.")


def test_password_is_used_and_never_shown(lab_inventory: Inventory,
                                          rdb: redispy.Redis) -> None:
    password = "pw-" + "x7" * 8
    rdb.config_set("requirepass", password)
    try:
        base = lab_inventory.host(HOST)
        for given, ok in ((password, True), ("wrong-" + password, False), (None, False)):
            extra = {} if given is None else {"redis_password": Secret(given)}
            host = dataclasses.replace(base, vars={**base.vars, **extra})
            with Connection(host) as c:
                result = redis.key("app:locked", "v").run(c)
            assert result.ok is ok, result.message
            assert password not in result.message and "x7x7" not in result.message
            if not ok:
                assert result.message.startswith(f"Redis at {FORWARDED} refused the login: ")
                assert result.message.endswith("(check the host var redis_password)")
    finally:
        rdb.auth(password)
        rdb.config_set("requirepass", "")


def test_runner_probes_redis_tasks_itself(clean_lab: Lab, lab_inventory: Inventory,
                                          rdb: redispy.Redis) -> None:
    steps = [redis.wait_ready(timeout=5), redis.key("app:mode", "blue"),
             redis.hash("app:limits", {"rpm": 600}), redis.check(role="master")]
    hosts = lab_inventory.select(HOST)
    first = Runner(steps).run(hosts)
    assert [r.status.value for r in first.hosts[HOST].results] == ["ok", "changed",
                                                                  "changed", "ok"]
    again = Runner(steps)
    second = again.run(hosts)
    assert [r.status.value for r in second.hosts[HOST].results] == ["ok"] * 4
    assert [c.command for c in again.logs[HOST] if c.write] == []
    assert rdb.get("app:mode") == b"blue" and rdb.hget("app:limits", "rpm") == b"600"
