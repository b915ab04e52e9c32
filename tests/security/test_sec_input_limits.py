"""Hostile inventory and deploykit.yml files: wrong types, huge values, YAML bombs.

Each is refused with one clear error naming the file (and the key or line), fast,
without expanding anything, and the CLI prints it as one ``error:`` line with no
traceback. No hosts needed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from deploykit.config import load_config
from deploykit.errors import ConfigError, InventoryError
from deploykit.inventory import Inventory
from deploykit.yamlsafe import MAX_SCALAR

ROOT = Path(__file__).resolve().parents[2]



def laughs(levels: int = 9, indent: str = "  ") -> str:
    """A "billion laughs" block of anchors under a key ``x``: ``*lol<levels>`` expands to
    9**levels strings (9**9: 387 million)."""
    lines = ["lol0: &lol0 ['lol']"] + [
        f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "x:\n" + "".join(f"{indent}{line}\n" for line in lines)


def inventory_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(text)
    return path


def inventory_error(tmp_path: Path, text: str) -> InventoryError:
    path = inventory_file(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    err = info.value
    assert str(path) in str(err)  # names the file
    assert len(str(err)) < 400, str(err)[:400]  # one line, not the value
    return err


# -- inventories ---------------------------------------------------------------------------


def test_a_billion_laughs_inventory_is_refused_before_it_expands(tmp_path: Path) -> None:
    text = laughs() + "all:\n  vars: {bomb: *lol9}\n  hosts: {web-1: {address: 198.18.0.2}}\n"
    err = inventory_error(tmp_path, text)
    assert "expands to over" in err.message and "billion laughs" in err.message


def test_a_ten_megabyte_value_is_refused_naming_its_key(tmp_path: Path) -> None:
    huge = "x" * (10 * 1024 * 1024)
    err = inventory_error(tmp_path, f"all:\n  hosts:\n    web-1: {{address: 198.18.0.2, "
                                    f"motd: {huge}}}\n")
    assert "too large" in err.message and "MiB" in err.message
    # under the file limit, the value limit names the key and its line
    big = "y" * (MAX_SCALAR + 1)
    err = inventory_error(tmp_path, f"all:\n  hosts:\n    web-1:\n      address: 198.18.0.2\n"
                                    f"      motd: {big}\n")
    assert (err.line, err.field) == (5, "all.hosts.web-1.motd")
    assert f"{MAX_SCALAR + 1:,} characters" in err.message


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    err = inventory_error(tmp_path, "all:\n  vars: {deep: " + "[" * 5000 + "]" * 5000 + "}\n")
    assert "nested" in err.message
    err = inventory_error(tmp_path, "all:\n  vars: {deep: " + "[" * 100 + "]" * 100 + "}\n")
    assert "nested deeper than 64 levels" in err.message


@pytest.mark.parametrize(("entry", "expected"), [
    ("{address: 198.18.0.2, port: 1000000000}",
     "'port' must be an integer in 1..65535, got 1000000000"),
    ("{address: 198.18.0.2, port: '22; touch /tmp/pwned'}",
     "'port' must be an integer in 1..65535, got str"),
    ("{address: [198.18.0.2]}", "'address' must be a non-empty string, got list"),
    ("{address: '198.18.0.2; touch /tmp/pwned'}", "'address' must be a host name or IP"),
    ("{address: \"198.18.0.2\\nProxyCommand x\"}", "'address' must be a host name or IP"),
    ("{address: 198.18.0.2, user: 'root$(touch /tmp/pwned)'}", "'user' must be a user name"),
    ("{address: 198.18.0.2, user: \"deploy\\0\"}", "'user' must be a user name"),
    ("{address: 198.18.0.2, become: 'yes please'}", "'become' must be true or false"),
    ("{address: 198.18.0.2, known_hosts: \"/tmp/kh\\n\"}", "'known_hosts' must be a path"),
    ("[198.18.0.2]", "host 'web-1' must be a mapping, got list"),
    ("{address: 198.18.0.2, vars: [a, b]}", "'vars' must be a mapping, got list"),
])
def test_wrong_types_and_unsafe_settings_are_refused(tmp_path: Path, entry: str,
                                                     expected: str) -> None:
    err = inventory_error(tmp_path, f"all:\n  hosts:\n    web-1: {entry}\n")
    assert expected in err.message
    assert err.line == 3


def test_a_list_where_the_groups_mapping_is_expected(tmp_path: Path) -> None:
    err = inventory_error(tmp_path, "all:\n  children: [web, db]\n")
    assert err.message == "'children' must be a mapping, got list"
    assert (err.line, err.field) == (2, "all.children")


def test_the_cli_prints_one_error_line_for_a_hostile_inventory(tmp_path: Path) -> None:
    inventory = inventory_file(tmp_path, laughs() + "all:\n  vars: {bomb: *lol9}\n")
    config = tmp_path / "deploykit.yml"
    config.write_text(yaml.safe_dump({"app": "sampleapp", "inventory": str(inventory)}))
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), "status"], cwd=ROOT,
                          env={**os.environ, "DEPLOYKIT_CONFIG": str(config)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[:2000]
    assert str(inventory) in lines[0] and "expands to over" in lines[0]


# -- deploykit.yml ------------------------------------------------------------------------


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "deploykit.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert len(str(info.value)) < 400, str(info.value)[:400]
    return info.value


@pytest.mark.parametrize(("text", "expected"), [
    ("app: [sampleapp]\n", "app must be a name"),
    ("app: sampleapp\nports: {blue: 1000000000, green: 8002}\n", "ports must be"),
    ("app: sampleapp\nenv: [DATABASE_URL]\n", "env must be a mapping"),
    ("app: sampleapp\ndatabase: [sampleapp]\n", "database must be a mapping"),
    ("app: 'x; touch /tmp/pwned'\n", "app must be a name"),
    ("- app\n- sampleapp\n", "expected a mapping of keys, got list"),
])
def test_config_wrong_types_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(tmp_path, text).message


def test_config_huge_value_is_refused_in_one_short_line(tmp_path: Path) -> None:
    err = config_error(tmp_path, f"app: sampleapp\nenv: {{MOTD: {'x' * (10 * 2**20)}}}\n")
    assert "MiB" in err.message


def test_config_billion_laughs_is_refused_without_expanding(tmp_path: Path) -> None:
    # 9**7 strings (not 9**9): without the fix, the error message expands the whole value
    items = ["  - &a0 [lol]"] + [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]"
                                 for i in range(1, 8)]
    err = config_error(tmp_path, "app: sampleapp\ncommand:\n" + "\n".join(items) + "\n")
    assert "expands to over" in err.message
