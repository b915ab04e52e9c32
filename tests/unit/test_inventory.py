"""Unit tests for deploykit.inventory: loading, precedence, selectors and errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from deploykit.errors import InventoryError
from deploykit.inventory import Host, Inventory, load_inventory
from deploykit.secrets import Secret

EXAMPLE = """\
all:
  vars: {app: shop}
  hosts:
    bastion: {address: 198.18.0.5}
  children:
    web:
      vars: {app_port: 8000}
      hosts:
        web-1: {address: 198.18.0.11, port: 2222, user: deploy, vars: {weight: 5}}
        web-2: {address: 198.18.0.12}
      children:
        web_eu: {hosts: {web-2: {}}}
    db:
      hosts:
        db-1: {address: 198.18.0.13, role_version: 15}
"""


def write(tmp_path: Path, text: str, name: str = "inv.yml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Inventory:
    return Inventory.load(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> InventoryError:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, text)
    return info.value


@pytest.fixture
def example(tmp_path: Path) -> Inventory:
    return load(tmp_path, EXAMPLE)


# --- loading the example ------------------------------------------------------------------------


def test_example_hosts(example: Inventory, tmp_path: Path) -> None:
    assert example.source == str(tmp_path / "inv.yml")
    assert list(example.hosts) == ["bastion", "web-1", "web-2", "db-1"]
    assert example.hosts["web-1"] == Host(
        name="web-1",
        address="198.18.0.11",
        port=2222,
        user="deploy",
        vars={"app": "shop", "app_port": 8000, "weight": 5},
        groups=("web",),
    )
    assert example.hosts["web-2"] == Host(
        name="web-2",
        address="198.18.0.12",
        vars={"app": "shop", "app_port": 8000},
        groups=("web", "web_eu"),
    )
    assert example.hosts["db-1"].vars == {"app": "shop", "role_version": 15}
    assert example.hosts["bastion"].groups == ()


def test_example_groups(example: Inventory) -> None:
    assert example.groups == {
        "all": ("bastion", "web-1", "web-2", "db-1"),
        "web": ("web-1", "web-2"),
        "web_eu": ("web-2",),
        "db": ("db-1",),
    }


def test_host_lookup(example: Inventory) -> None:
    assert example.host("db-1").address == "198.18.0.13"
    with pytest.raises(InventoryError) as info:
        example.host("db1")
    assert str(info.value) == (
        f"{example.source}: unknown host 'db1' (did you mean 'db-1'?); "
        "hosts: bastion, web-1, web-2, db-1"
    )


def test_hosts_are_hashable_and_vars_independent(example: Inventory) -> None:
    assert len({example.hosts["web-1"], example.hosts["web-1"], example.hosts["web-2"]}) == 2
    hosts = {"h1": {"address": "x"}, "h2": {"address": "y"}}
    shared = load_inventory({"all": {"vars": {"tags": ["a"]}, "hosts": hosts}})
    shared.hosts["h1"].vars["tags"].append("b")
    assert shared.hosts["h2"].vars["tags"] == ["a"]


# --- vars precedence ----------------------------------------------------------------------------

PRECEDENCE = """\
all:
  vars: {a: all, b: all, c: all, d: all, e: all, dict: {x: 1, y: 1}}
  children:
    parent:
      vars: {b: parent, c: parent, d: parent}
      children:
        child:
          vars: {c: child, d: child, dict: {x: 2}}
          hosts:
            h1: {address: 10.0.0.1, d: host-key, vars: {e: host-vars}}
    first:
      vars: {s: first, t: first}
      hosts:
        h2: {address: 10.0.0.2}
    second:
      vars: {s: second}
      hosts:
        h2: {}
    deep_parent:
      children:
        deep:
          vars: {t: deep, u: deep}
          hosts:
            h2: {}
    late:
      vars: {t: late, u: late}
      hosts:
        h2: {}
    again:
      children:
        late_twice:
          vars: {v: depth-2}
    late_twice:
      vars: {w: late_twice}
      hosts:
        h2: {}
    other:
      vars: {v: other, w: other}
      hosts:
        h2: {}
"""


@pytest.mark.parametrize(
    ("host", "var", "expected"),
    [
        ("h1", "a", "all"),  # only set in all
        ("h1", "b", "parent"),  # parent beats all
        ("h1", "c", "child"),  # child beats parent
        ("h1", "d", "host-key"),  # an extra host key is a host var and beats every group
        ("h1", "e", "host-vars"),  # host vars: beats every group
        ("h1", "dict", {"x": 2}),  # values replace whole, no deep merge
        ("h2", "s", "second"),  # same depth: the group defined later wins
        ("h2", "t", "deep"),  # depth beats definition order: deep (2) over late (1)
        ("h2", "u", "deep"),
        # late_twice is also a child of 'again': its vars from both places merge, and its
        # depth is 2 (the longest path from all), so it beats 'other' (depth 1, defined later)
        ("h2", "v", "depth-2"),
        ("h2", "w", "late_twice"),  # depth 2 beats 'other' (depth 1, defined later)
    ],
)
def test_vars_precedence(tmp_path: Path, host: str, var: str, expected: Any) -> None:
    inventory = load(tmp_path, PRECEDENCE)
    assert inventory.hosts[host].vars[var] == expected


def test_precedence_groups_of_host(tmp_path: Path) -> None:
    inventory = load(tmp_path, PRECEDENCE)
    assert inventory.hosts["h1"].groups == ("parent", "child")
    assert inventory.hosts["h2"].groups == (
        "first",
        "second",
        "deep_parent",
        "deep",
        "late",
        "again",
        "late_twice",
        "other",
    )
    assert inventory.groups["again"] == ("h2",)
    assert inventory.groups["parent"] == ("h1",)


def test_host_entries_merge_later_var_wins(tmp_path: Path) -> None:
    inventory = load(
        tmp_path,
        """\
        all:
          children:
            a: {hosts: {h: {address: 10.0.0.1, port: 2200, x: 1, y: 1}}}
            b: {hosts: {h: {address: 10.0.0.1, x: 2}}}
        """,
    )
    host = inventory.hosts["h"]
    assert (host.address, host.port, host.vars, host.groups) == (
        "10.0.0.1",
        2200,
        {"x": 2, "y": 1},
        ("a", "b"),
    )


# --- SSH settings -------------------------------------------------------------------------------


def test_settings_from_group_vars(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    inventory = load(
        tmp_path,
        """\
        all:
          vars: {user: deploy, port: 2200, become: true, identity_file: keys/id}
          hosts:
            plain: {address: 10.0.0.1}
          children:
            web:
              vars: {user: www, password: s3cret, known_hosts: /etc/kh}
              hosts:
                web-1: {address: 10.0.0.2}
                web-2: {address: 10.0.0.3, user: admin, vars: {port: 2201}, become: false}
        """,
    )
    plain, web1, web2 = inventory.hosts.values()
    keys = str(tmp_path / "keys" / "id")
    assert plain == Host("plain", "10.0.0.1", 2200, "deploy", keys, None, True)
    assert web1 == Host(
        "web-1", "10.0.0.2", 2200, "www", keys, "/etc/kh", True, Secret("s3cret"), {}, ("web",)
    )
    assert web2 == Host(
        "web-2", "10.0.0.3", 2201, "admin", keys, "/etc/kh", False, Secret("s3cret"), {}, ("web",)
    )


def test_defaults(tmp_path: Path) -> None:
    host = load(tmp_path, "all: {hosts: {h: {address: h.example}}}").hosts["h"]
    assert (host.port, host.user, host.identity_file, host.known_hosts) == (22, "root", None, None)
    assert (host.become, host.password, host.vars, host.groups) == (False, None, {}, ())


def test_paths_resolved_against_inventory_dir(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(
        tmp_path,
        """\
        all:
          hosts:
            a: {address: x, identity_file: keys/id, known_hosts: ../kh}
            b: {address: y, identity_file: ~/.ssh/id_ed25519, known_hosts: /abs/kh}
        """,
        name="conf/inv.yml",
    )
    monkeypatch.chdir(tmp_path / "conf")
    inventory = Inventory.load(os.path.relpath(path))  # a relative path to the file works too
    a, b = inventory.hosts.values()
    assert a.identity_file == str(tmp_path / "conf" / "keys" / "id")
    assert a.known_hosts == str(tmp_path / "kh")
    assert b.identity_file == str(tmp_path / "home" / ".ssh" / "id_ed25519")
    assert b.known_hosts == "/abs/kh"


def test_password_is_secret_and_redacted(tmp_path: Path) -> None:
    host = load(tmp_path, "all: {hosts: {h: {address: x, password: hunter2}}}").hosts["h"]
    assert isinstance(host.password, Secret)
    assert host.password.reveal() == "hunter2"
    assert "hunter2" not in repr(host)
    assert "password=Secret(********)" in repr(host)
    assert "password" not in host.vars


def test_conflicting_password_is_not_revealed(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          children:
            a: {hosts: {h: {address: x, password: hunter2}}}
            b: {hosts: {h: {password: swordfish}}}
        """,
    )
    assert "hunter2" not in str(err) and "swordfish" not in str(err)
    assert str(err).startswith(f"{tmp_path / 'inv.yml'}:4 (all.children.b.hosts.h.password): ")
    assert "conflicting 'password': ******** (line 3) and ********" in str(err)


# --- from_dict and load_inventory ---------------------------------------------------------------


def test_from_dict(tmp_path: Path, monkeypatch: Any) -> None:
    data: dict[str, Any] = {
        "all": {"hosts": {"h": {"address": "x", "identity_file": "id", "password": "pw"}}}
    }
    inventory = Inventory.from_dict(data, base_dir=str(tmp_path))
    assert inventory.source == "<dict>"
    assert inventory.hosts["h"].identity_file == str(tmp_path / "id")
    assert inventory.hosts["h"].password == Secret("pw")
    monkeypatch.chdir(tmp_path / "..")
    assert Inventory.from_dict(data).hosts["h"].identity_file == str(tmp_path.parent / "id")
    secret = Secret("pw2")
    data["all"]["hosts"]["h"]["password"] = secret
    assert load_inventory(data).hosts["h"].password is secret


def test_from_dict_errors_name_field_without_line() -> None:
    with pytest.raises(InventoryError) as info:
        Inventory.from_dict({"all": {"hosts": {"h": {"address": "x", "port": "22"}}}}, "cfg")
    err = info.value
    assert (err.source, err.line, err.field) == ("cfg", None, "all.hosts.h.port")
    assert (
        str(err)
        == "cfg (all.hosts.h.port): host 'h': 'port' must be an integer in 1..65535, got str"
    )


def test_load_inventory_accepts_path_and_str(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    assert list(load_inventory(path).hosts) == list(load_inventory(str(path)).hosts)


# --- selectors ----------------------------------------------------------------------------------


def names(hosts: list[Host]) -> list[str]:
    return [host.name for host in hosts]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("web-1", ["web-1"]),  # host name
        ("web", ["web-1", "web-2"]),  # group, children included
        ("web_eu", ["web-2"]),
        ("web-*", ["web-1", "web-2"]),  # glob on host names
        ("web_*", ["web-2"]),  # glob on group names
        ("*-1", ["web-1", "db-1"]),
        ("d?", ["db-1"]),
        ("db-1,web-1", ["web-1", "db-1"]),  # inventory order, not selector order
        ("web, db-*", ["web-1", "web-2", "db-1"]),  # spaces around items are ignored
        ("web,web-1,web-*,web_eu", ["web-1", "web-2"]),  # unique
        ("all", ["bastion", "web-1", "web-2", "db-1"]),
        ("*", ["bastion", "web-1", "web-2", "db-1"]),
        ("bastion,all", ["bastion", "web-1", "web-2", "db-1"]),
    ],
)
def test_select(example: Inventory, selector: str, expected: list[str]) -> None:
    assert names(example.select(selector)) == expected


def test_select_returns_host_objects(example: Inventory) -> None:
    assert example.select("db-1") == [example.hosts["db-1"]]


def test_select_no_match(example: Inventory) -> None:
    with pytest.raises(InventoryError) as info:
        example.select("web-1,wbe")
    assert str(info.value) == (
        f"{example.source}: selector 'wbe' matches no host or group (did you mean 'web'?); "
        "hosts: bastion, web-1, web-2, db-1; groups: all, web, web_eu, db"
    )
    with pytest.raises(InventoryError, match=r"selector 'mail-\*' matches no host or group; "):
        example.select("mail-*")


def test_select_empty_group_and_empty_items(tmp_path: Path) -> None:
    inventory = load(tmp_path, "all: {hosts: {h: {address: x}}, children: {spare: {}}}")
    assert inventory.groups == {"all": ("h",), "spare": ()}
    with pytest.raises(InventoryError, match=r"selector 'spare' matches no host \(empty group: "):
        inventory.select("h,spare")
    for selector in ("", " ", "h,", "h,,h"):
        with pytest.raises(InventoryError, match="empty item in selector"):
            inventory.select(selector)


# --- errors: file and YAML ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        Inventory.load(tmp_path / "nope.yml")
    assert str(info.value) == f"{tmp_path / 'nope.yml'}: inventory file not found"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  hosts:\n    h: {address: x\n  vars: {}\n")
    assert err.line == 4
    assert str(err).startswith(f"{tmp_path / 'inv.yml'}:4: invalid YAML: ")


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          hosts:
            web-1: {address: 10.0.0.1}
            web-2: {address: 10.0.0.2}
            web-1: {address: 10.0.0.3}
        """,
    )
    assert str(err) == f"{tmp_path / 'inv.yml'}:5: duplicate key 'web-1' (first at line 3)"


def test_duplicate_key_nested_in_flow_mapping(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  hosts:\n    h: {address: x,\n        address: y}\n")
    assert (err.line, err.message) == (4, "duplicate key 'address' (first at line 3)")


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    inventory = load(
        tmp_path,
        """\
        all:
          vars:
            base: &base {port: 2200, user: x}
          hosts:
            h: {<<: *base, address: 10.0.0.1, port: 2201}
        """,
    )
    host = inventory.hosts["h"]
    assert (host.port, host.user) == (2201, "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "inventory is empty; expected a mapping with the key 'all'"),
        ("- a\n", "inventory must be a mapping with the key 'all', got list"),
        ("{}\n", "missing top-level key 'all'"),
    ],
)
def test_top_level_shape(tmp_path: Path, text: str, message: str) -> None:
    assert str(load_error(tmp_path, text)) == f"{tmp_path / 'inv.yml'}: {message}"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all: {}\nal:\n  hosts: {}\n")
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:2 (al): unknown top-level key 'al' (did you mean 'all'?); "
        "the top level has the single key 'all'"
    )


def test_unknown_group_key(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          children:
            web:
              host:
                web-1: {address: x}
        """,
    )
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:4 (all.children.web.host): unknown key 'host' in group 'web' "
        "(did you mean 'hosts'?); a group has only hosts, children, vars"
    )


# --- errors: hosts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("adress", "address"),
        ("identityfile", "identity_file"),
        ("Port", "port"),
        ("users", "user"),
        ("known_host", "known_hosts"),
        ("becom", "become"),
    ],
)
def test_near_miss_setting_is_an_error(tmp_path: Path, key: str, suggestion: str) -> None:
    err = load_error(tmp_path, f"all:\n  hosts:\n    h:\n      address: x\n      {key}: 1\n")
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:5 (all.hosts.h.{key}): unknown key '{key}' on host 'h'; "
        f"did you mean '{suggestion}'? (a host var with this name goes under 'vars:')"
    )


def test_near_miss_name_is_fine_under_vars(tmp_path: Path) -> None:
    inventory = load(tmp_path, "all: {hosts: {h: {address: x, addr: y, vars: {users: [a]}}}}")
    assert inventory.hosts["h"].vars == {"addr": "y", "users": ["a"]}


def test_missing_address_names_host_and_first_line(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          vars: {user: x}
          children:
            web:
              hosts:
                web-1: {port: 2200}
            eu:
              hosts:
                web-1: {user: y}
        """,
    )
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:6 (all.children.web.hosts.web-1): host 'web-1' has no address"
    )


def test_conflicting_address(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          children:
            web:
              hosts:
                web-1: {address: 10.0.0.1}
            eu:
              hosts:
                web-1: {address: 10.0.0.9}
        """,
    )
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:8 (all.children.eu.hosts.web-1.address): host 'web-1' has "
        "conflicting 'address': '10.0.0.1' (line 5) and '10.0.0.9'"
    )


def test_same_address_twice_is_fine(tmp_path: Path) -> None:
    text = "all: {children: {a: {hosts: {h: {address: x}}}, b: {hosts: {h: {address: x}}}}}"
    assert load(tmp_path, text).hosts["h"].address == "x"


def test_var_set_twice_in_one_host_entry(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  hosts:\n    h:\n      port: 1\n      vars: {port: 2}\n")
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:5 (all.hosts.h.vars.port): 'port' set twice for host 'h' (line 4)"
    )


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("port", "'22'", "'port' must be an integer in 1..65535, got str"),
        ("port", "0", "'port' must be an integer in 1..65535, got 0"),
        ("port", "65536", "'port' must be an integer in 1..65535, got 65536"),
        ("port", "true", "'port' must be an integer in 1..65535, got bool"),
        ("become", "'yes'", "'become' must be true or false, got str"),
        ("become", "1", "'become' must be true or false, got int"),
        ("user", "''", "'user' must be a non-empty string, got an empty string"),
        ("user", "[a]", "'user' must be a non-empty string, got list"),
        ("identity_file", "42", "'identity_file' must be a non-empty string, got int"),
        ("password", "1234", "'password' must be a non-empty string, got int"),
    ],
)
def test_setting_types(tmp_path: Path, setting: str, value: str, problem: str) -> None:
    err = load_error(
        tmp_path, f"all:\n  hosts:\n    h:\n      address: x\n      {setting}: {value}\n"
    )
    assert str(err) == f"{tmp_path / 'inv.yml'}:5 (all.hosts.h.{setting}): host 'h': {problem}"
    assert "1234" not in err.message


def test_address_type(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  hosts:\n    h: {address: 10.5}\n")
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:3 (all.hosts.h.address): "
        "host 'h': 'address' must be a non-empty string, got float"
    )


def test_bad_setting_in_group_vars_points_at_group(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          children:
            web:
              vars:
                port: 99999
              hosts:
                web-1: {address: x}
        """,
    )
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:5 (all.children.web.vars.port): "
        "host 'web-1': 'port' must be an integer in 1..65535, got 99999"
    )


def test_address_is_not_a_group_var(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  vars:\n    address: x\n")
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:3 (all.vars.address): "
        "'address' is set per host, not as a group var"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "all:\n  hosts:\n    'a,b': {address: x}\n",
            ":3 (all.hosts.a,b): invalid host name 'a,b': no whitespace, ',' or '*?[]'",
        ),
        (
            "all:\n  children:\n    'web*': {}\n",
            ":3 (all.children.web*): invalid group name 'web*': no whitespace, ',' or '*?[]'",
        ),
        (
            "all:\n  hosts:\n    1: {address: x}\n",
            ":3 (all.hosts.1): host name must be a string, got int",
        ),
        (
            "all:\n  hosts:\n    h: 10.0.0.1\n",
            ":3 (all.hosts.h): host 'h' must be a mapping, got str",
        ),
        ("all:\n  hosts: [h]\n", ":2 (all.hosts): 'hosts' must be a mapping, got list"),
        ("all:\n  vars: [a]\n", ":2 (all.vars): 'vars' must be a mapping, got list"),
        (
            "all:\n  hosts:\n    h: {address: x, vars: 3}\n",
            ":3 (all.hosts.h.vars): 'vars' must be a mapping, got int",
        ),
        (
            "all:\n  children:\n    web: [a]\n",
            ":3 (all.children.web): group 'web' must be a mapping, got list",
        ),
        (
            "all:\n  hosts:\n    web: {address: x}\n  children:\n    web: {}\n",
            ":3 (all.hosts.web): 'web' is both a host and a group",
        ),
    ],
)
def test_shape_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert str(load_error(tmp_path, text)) == f"{tmp_path / 'inv.yml'}{expected}"


# --- errors: group cycles -----------------------------------------------------------------------


def test_cycle_across_definitions(tmp_path: Path) -> None:
    err = load_error(
        tmp_path,
        """\
        all:
          children:
            a:
              children:
                b: {}
            b:
              children:
                a: {}
        """,
    )
    assert (
        str(err)
        == f"{tmp_path / 'inv.yml'}:8 (all.children.b.children.a): group cycle: a -> b -> a"
    )


def test_cycle_nested_in_document(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  children:\n    a:\n      children:\n        all: {}\n")
    assert str(err) == (
        f"{tmp_path / 'inv.yml'}:5 (all.children.a.children.all): group cycle: all -> a -> all"
    )


def test_self_cycle_and_recursive_alias(tmp_path: Path) -> None:
    err = load_error(tmp_path, "all:\n  children:\n    a: {children: {a: {}}}\n")
    assert (err.line, err.message) == (3, "group cycle: a -> a")
    err = load_error(tmp_path, "all:\n  children:\n    a: &a\n      children: {b: *a}\n")
    assert (err.line, err.message) == (4, "group cycle: b -> b")


def test_group_referenced_twice_is_merged(tmp_path: Path) -> None:
    inventory = load(
        tmp_path,
        """\
        all:
          children:
            eu:
              vars: {region: eu}
              hosts: {h1: {address: x}}
            web:
              children:
                eu:
                  vars: {tier: web}
                  hosts: {h2: {address: y}}
        """,
    )
    assert inventory.groups == {"all": ("h1", "h2"), "eu": ("h1", "h2"), "web": ("h1", "h2")}
    assert inventory.hosts["h1"].vars == {"region": "eu", "tier": "web"}
    assert inventory.hosts["h1"].groups == ("eu", "web")
