"""ssh_config and jump host resolution (no hosts): precedence, chains, ansible args."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploykit.errors import ConfigError
from deploykit.inventory import Inventory
from deploykit.sshconfig import jump_spec, parse_hop, resolve


def _inventory(tmp_path: Path, **host_vars: object) -> Inventory:
    return Inventory.from_dict({"all": {"hosts": {
        "web-1": {"address": "prod-web", **host_vars},
        "bastion": {"address": "10.9.0.1", "user": "jump", "port": 2222},
    }}}, source=str(tmp_path / "inventory.yml"))


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    (tmp_path / "id_prod").write_text("x")
    return str(path)


def test_ssh_config_fills_what_the_inventory_leaves_out(tmp_path: Path) -> None:
    config = _config(tmp_path, f"Host prod-*\n  HostName 10.0.0.5\n  User deploy\n  Port 2200\n"
                               f"  IdentityFile {tmp_path}/missing\n"
                               f"  IdentityFile {tmp_path}/id_prod\n")
    host, jumps = resolve(_inventory(tmp_path, ssh_config=config).host("web-1"))
    assert (host.address, host.user, host.port) == ("10.0.0.5", "deploy", 2200)
    assert host.identity_file == f"{tmp_path}/id_prod" and jumps == []


def test_inventory_settings_win_over_ssh_config(tmp_path: Path) -> None:
    config = _config(tmp_path, "Host prod-web\n  HostName 10.0.0.5\n  User deploy\n  Port 2200\n")
    host, _ = resolve(_inventory(tmp_path, ssh_config=config, user="ops", port=22)
                      .host("web-1"))
    assert (host.address, host.user, host.port) == ("10.0.0.5", "ops", 22)


def test_no_ssh_config_changes_nothing(tmp_path: Path) -> None:
    original = _inventory(tmp_path, ssh_config="none").host("web-1")
    assert resolve(original) == (original, [])


def test_a_jump_chain_and_an_inventory_host_as_jump(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, ssh_config="none", jump="bastion,ops@10.9.0.2:22")
    host = inventory.host("web-1")
    assert host.vars["jump"] == "jump@10.9.0.1:2222,ops@10.9.0.2:22"
    _, jumps = resolve(host)
    assert [(h.user, h.address, h.port) for h in jumps] == [("jump", "10.9.0.1", 2222),
                                                            ("ops", "10.9.0.2", 22)]
    assert jumps[1].vars["jump"] == "jump@10.9.0.1:2222"  # the second is reached via the first


@pytest.mark.parametrize("args", ["-J gw.example.com", "-Jgw.example.com",
                                  "-o ProxyJump=gw.example.com", "-oProxyJump=gw.example.com",
                                  "-o 'ProxyJump gw.example.com' -o Compression=yes"])
def test_ansible_ssh_common_args(tmp_path: Path, args: str) -> None:
    host = _inventory(tmp_path, ssh_config="none", ansible_ssh_common_args=args).host("web-1")
    assert jump_spec(host, {}) == "gw.example.com"


@pytest.mark.parametrize(("text", "expected"), [
    ("gw", (None, "gw", None)), ("ops@gw:2222", ("ops", "gw", 2222)),
    ("ssh://ops@gw:22", ("ops", "gw", 22)), ("[fd00::1]:2222", (None, "fd00::1", 2222))])
def test_parse_hop(text: str, expected: tuple[object, ...]) -> None:
    assert parse_hop(text, "x") == expected


@pytest.mark.parametrize("bad", ["ops@gw:ssh", "ops@:22", "gw:70000"])
def test_bad_hops_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="jump host"):
        parse_hop(bad, "host 'web-1'")


def test_an_unreadable_ssh_config_is_a_config_error(tmp_path: Path) -> None:
    host = _inventory(tmp_path, ssh_config=str(tmp_path / "nope")).host("web-1")
    with pytest.raises(ConfigError, match="ssh_config"):
        resolve(host)
