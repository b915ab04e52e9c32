"""Feature flags without hosts: the runtime rules (buckets, rollout, allow-list, kill
switch), validation, the stored form, and the flag task's plan from recorded facts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.flags import (
    BUCKETS,
    Flag,
    bucket,
    check_name,
    check_rollout,
    encode,
    flag_key,
    glob_escape,
    render_field,
)
from deploykit.inventory import Host
from deploykit.tasks import flags as flag_tasks

USERS = [f"user-{i}" for i in range(10_000)]


def enabled_users(flag: Flag) -> set[str]:
    return {u for u in USERS if flag.is_enabled(u)}


# -- buckets and rollout --------------------------------------------------------------


def test_bucket_is_a_stable_sha256_of_flag_and_user() -> None:
    # Pinned values: changing the bucketing would move every user of every flag.
    assert bucket("beta", "42") == 8783
    assert bucket("beta", 42) == 8783  # ids compare as text
    assert bucket("other", "42") == 5526  # independent per flag
    assert all(0 <= bucket("beta", u) < BUCKETS for u in USERS[:500])


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_rollout_enables_that_share_of_users(percent: int) -> None:
    share = len(enabled_users(Flag("beta", enabled=True, rollout=percent))) / len(USERS) * 100
    assert abs(share - percent) <= 1.5, share


def test_rollout_only_ever_adds_users() -> None:
    at = {p: enabled_users(Flag("beta", enabled=True, rollout=p)) for p in (0, 5, 25, 50, 100)}
    assert at[0] == set() and at[100] == set(USERS)
    assert abs(len(at[25]) / 100 - 25) <= 1.5
    assert at[5] <= at[25] <= at[50] <= at[100]
    assert len(at[5]) < len(at[25]) < len(at[50])


def test_fractional_rollout_uses_the_bucket_resolution() -> None:
    flag = Flag("beta", enabled=True, rollout=0.5)
    assert {u for u in USERS if bucket("beta", u) < 50} == enabled_users(flag)


def test_kill_switch_overrides_everything() -> None:
    flag = Flag("beta", enabled=True, rollout=100, allow=frozenset({"vip"}), killed=True)
    assert enabled_users(flag) == set()
    assert not flag.is_enabled("vip") and not flag.is_enabled(None)


def test_allow_list_bypasses_the_rollout_but_not_the_main_switch() -> None:
    flag = Flag("beta", enabled=True, rollout=0, allow=frozenset({"vip", "42"}))
    assert enabled_users(flag) == set()
    assert flag.is_enabled("vip") and flag.is_enabled(42)
    assert not Flag("beta", enabled=False, rollout=100,
                    allow=frozenset({"vip"})).is_enabled("vip")


def test_without_a_user_only_a_full_rollout_is_on() -> None:
    assert Flag("beta", enabled=True, rollout=100).is_enabled()
    assert not Flag("beta", enabled=True, rollout=99.99).is_enabled()


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["new checkout", "", " beta", "beta*", "a:b", "-x", "x" * 101])
def test_bad_flag_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid flag name") as err:
        check_name(name)
    assert repr(name) in err.value.message


def test_good_flag_names_pass() -> None:
    for name in ("beta", "new-checkout", "v2.search_ranking", "X" * 100):
        assert check_name(name) == name
    assert flag_key("beta") == "deploykit:flag:beta"


@pytest.mark.parametrize("value", [-1, 100.5, 1000, "abc", True, float("nan"), None, "inf"])
def test_rollout_outside_0_to_100_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="rollout") as err:
        check_rollout(value, "beta")
    assert repr(value) in err.value.message and "'beta'" in err.value.message


def test_rollout_accepts_numbers_and_numeric_text() -> None:
    assert check_rollout(25) == 25.0
    assert check_rollout("12.5") == 12.5
    assert check_rollout(33.333) == 33.33
    assert check_rollout(0) == 0.0 and check_rollout(100) == 100.0


def test_the_flag_task_refuses_bad_input_when_built() -> None:
    with pytest.raises(ConfigError, match="invalid flag name 'new checkout'"):
        flag_tasks.flag("new checkout", enabled=True)
    with pytest.raises(ConfigError, match="rollout of flag 'beta' must be from 0 to 100"):
        flag_tasks.flag("beta", rollout=150)
    with pytest.raises(ConfigError, match="nothing to set"):
        flag_tasks.flag("beta")
    with pytest.raises(ConfigError, match="list of user ids"):
        flag_tasks.flag("beta", allow="alice")
    with pytest.raises(ConfigError, match="invalid flag name"):
        flag_tasks.kill("no such flag")


# -- stored form -----------------------------------------------------------------------


def test_encode_gives_the_stored_fields_for_what_is_given() -> None:
    assert encode(rollout=25.0) == {"rollout": "25"}
    assert encode(enabled=True, killed=False, rollout=12.5, allow=["b", "a", 3, "a"]) == {
        "enabled": "1", "killed": "0", "rollout": "12.5", "allow": '["3", "a", "b"]'}
    assert encode() == {}


def test_render_field_is_what_diffs_show() -> None:
    assert render_field("enabled", "1") == "true"
    assert render_field("killed", "0") == "false"
    assert render_field("rollout", "25") == "25"
    assert render_field("allow", '["a","b"]') == '["a", "b"]'
    assert render_field("enabled", "yes") == "'yes'"
    assert render_field("rollout", None) == "(none)"


def test_flag_from_hash_reads_bytes_and_defaults() -> None:
    flag = Flag.from_hash("beta", {b"enabled": b"1", b"rollout": b"25", b"allow": b'["x"]',
                                   b"updated_at": b"2025-01-01T00:00:00Z"})
    assert flag == Flag("beta", enabled=True, rollout=25.0, allow=frozenset({"x"}),
                        killed=False, updated_at="2025-01-01T00:00:00Z")


@pytest.mark.parametrize(("field", "raw", "message"), [
    ("enabled", "yes", "field enabled is 'yes'"),
    ("killed", "2", "field killed is '2'"),
    ("allow", "a,b", "field allow is 'a,b'"),
    ("rollout", "250", "rollout of flag 'beta'"),
])
def test_flag_from_hash_names_a_bad_field(field: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Flag.from_hash("beta", {field: raw})


def test_glob_escape_makes_a_literal_match_prefix() -> None:
    assert glob_escape("deploykit:flag:") == "deploykit:flag:"
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


# -- the flag task's plan from recorded facts -----------------------------------------

CONN = Connection(Host(name="db-1", address="198.18.0.13"))  # never opened: plans only


def stored(**fields: str) -> dict[str, object]:
    return {"type": "hash", "fields": {k: v.encode() for k, v in fields.items()}}


def test_plan_shows_only_what_changes() -> None:
    current = stored(enabled="1", rollout="5", allow="[]", killed="0",
                     updated_at="2025-01-01T00:00:00Z")
    task = flag_tasks.flag("beta", enabled=True, rollout=25)
    assert task.plan(CONN, current).render() == "rollout: 5 -> 25"
    assert not flag_tasks.flag("beta", enabled=True, rollout=5).plan(CONN, current)
    assert flag_tasks.kill("beta").plan(CONN, current).render() == "killed: false -> true"


def test_plan_for_a_new_flag_lists_every_field_with_defaults() -> None:
    plan = flag_tasks.flag("beta", rollout=5).plan(CONN, {"type": "none", "fields": {}})
    assert plan.render() == ("state: absent -> present\nenabled: (none) -> false\n"
                             "rollout: (none) -> 5\nallow: (none) -> []\n"
                             "killed: (none) -> false")


def test_killing_a_missing_flag_fails_by_name() -> None:
    with pytest.raises(TaskError, match="flag 'beta' does not exist"):
        flag_tasks.kill("beta").plan(CONN, {"type": "none", "fields": {}})


def test_runtime_api_imports_without_paramiko(project_root: Path) -> None:
    """Apps import deploykit.flags with only redis-py installed: no SSH stack."""
    code = ("import sys; sys.modules['paramiko'] = None; sys.modules['fabric'] = None\n"
            "import deploykit.flags as f\n"
            "assert f.Flag('x', enabled=True).is_enabled('u')\n"
            "heavy = [m for m in ('paramiko', 'fabric', 'invoke', 'jinja2', 'psycopg')\n"
            "         if sys.modules.get(m) is not None]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=project_root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
