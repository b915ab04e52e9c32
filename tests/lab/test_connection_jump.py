"""Reaching a host through another (a jump host / bastion), and ssh_config as Fabric reads it.

web-2 is reached through web-1: by the ``jump`` host var (an address or another
inventory host's name), by ``ansible_ssh_common_args: -o ProxyJump=...``, and by an
ssh_config file (an alias with HostName, User, IdentityFile and ProxyJump). On web-2,
``$SSH_CONNECTION`` names web-1 as the client: the connection really went through it.
The jump host's key is checked as strictly as the target's.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from deploykit.connection import Connection, connect_all
from deploykit.errors import HostKeyError
from deploykit.inventory import Host, Inventory
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab


def _client_of(conn: Connection) -> str:
    """The client address web-2's sshd saw."""
    with conn:
        return conn.run("echo $SSH_CONNECTION").stdout.split()[0]


def _hosts(lab: Lab, lab_inventory: Inventory) -> tuple[Host, Host]:
    first, second = (lab_inventory.host(s.name) for s in lab.specs[:2])
    return first, second


def test_the_jump_var_goes_through_the_jump_host(lab: Lab, lab_inventory: Inventory) -> None:
    bastion, target = _hosts(lab, lab_inventory)
    direct = _client_of(Connection(target))
    assert direct != bastion.address
    via = dataclasses.replace(target, vars={**target.vars, "jump": f"root@{bastion.address}"})
    conn = Connection(via)
    assert [h.address for h in conn.jumps] == [bastion.address]
    assert _client_of(conn) == bastion.address


def test_a_jump_naming_an_inventory_host(lab: Lab, lab_inventory: Inventory) -> None:
    data = lab.inventory()
    bastion, target = (s.name for s in lab.specs[:2])
    group = next(iter(data["all"]["children"].values()))  # type: ignore[index]
    group["hosts"][target]["jump"] = bastion
    inventory = Inventory.from_dict(data, source="<lab>")
    assert _client_of(Connection(inventory.host(target))) == lab.address(bastion)


def test_ansible_ssh_common_args_proxyjump(lab: Lab, lab_inventory: Inventory) -> None:
    bastion, target = _hosts(lab, lab_inventory)
    via = dataclasses.replace(target, vars={
        **target.vars, "ansible_ssh_common_args": f"-o StrictHostKeyChecking=no "
                                                  f"-o ProxyJump=root@{bastion.address}"})
    assert _client_of(Connection(via)) == bastion.address


def test_ssh_config_alias_hostname_user_identity_and_proxyjump(
        lab: Lab, lab_inventory: Inventory, tmp_path: Path) -> None:
    bastion, target = _hosts(lab, lab_inventory)
    config = tmp_path / "ssh_config"
    config.write_text(f"Host app-server\n    HostName {target.address}\n    User root\n"
                      f"    IdentityFile {lab.identity_file}\n    ProxyJump gate\n"
                      f"    StrictHostKeyChecking no\n\n"
                      f"Host gate\n    HostName {bastion.address}\n"
                      f"    IdentityFile {lab.identity_file}\n")
    host = Host(name="app", address="app-server", known_hosts=target.known_hosts,
                vars={"ssh_config": str(config)})
    conn = Connection(host)
    assert conn.host.address == target.address and conn.host.identity_file is not None
    assert _client_of(conn) == bastion.address


def test_the_jump_hosts_key_is_checked_strictly(
        lab: Lab, lab_inventory: Inventory, tmp_path: Path) -> None:
    bastion, target = _hosts(lab, lab_inventory)
    assert target.known_hosts is not None
    known = tmp_path / "known_hosts"  # the target's key only: the bastion is unknown
    known.write_text("".join(line + "\n" for line in Path(target.known_hosts).read_text()
                             .splitlines() if line.split()[0] == target.address))
    via = dataclasses.replace(target, known_hosts=str(known),
                              vars={**target.vars, "jump": f"root@{bastion.address}"})
    with pytest.raises(HostKeyError) as info:
        Connection(via).open()
    assert bastion.address in str(info.value) and "unknown" in str(info.value)


def test_connect_all_reaches_hosts_behind_a_jump(lab: Lab, lab_inventory: Inventory) -> None:
    bastion, target = _hosts(lab, lab_inventory)
    via = dataclasses.replace(target, vars={**target.vars, "jump": f"root@{bastion.address}"})
    opened = connect_all([bastion, via], connect_timeout=5.0)
    try:
        conn = opened[target.name]
        assert isinstance(conn, Connection)
        assert conn.run("echo $SSH_CONNECTION").stdout.split()[0] == bastion.address
    finally:
        for value in opened.values():
            if isinstance(value, Connection):
                value.close()


def test_ssh_agent_keys_log_in(lab: Lab, lab_inventory: Inventory, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if socket_path.exists():
                break
            time.sleep(0.1)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(lab.identity_file)], env=env, check=True,
                       capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        _, target = _hosts(lab, lab_inventory)
        keyless = dataclasses.replace(target, identity_file=None)
        with Connection(keyless) as conn:
            assert conn.run("echo agent").stdout.strip() == "agent"
    finally:
        agent.terminate()
        agent.wait(timeout=10)
