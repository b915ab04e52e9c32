"""The bastion topology of the lab: the web and db hosts live on an inner network
that only the bastion host reaches; the controller has no route there."""

from __future__ import annotations

import socket
import subprocess

import paramiko
import pytest

from deploykit.inventory import Inventory
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

INNER = ("web-1", "web-2", "db-1")


def test_inner_hosts_have_no_route_from_the_controller(bastion_lab: Lab) -> None:
    for name in INNER:
        with pytest.raises(OSError):
            socket.create_connection((bastion_lab.address(name), 22), timeout=3).close()
    route = subprocess.run(["ip", "route", "get", bastion_lab.address("web-1")],
                           capture_output=True, text=True, check=False)
    assert route.returncode != 0 or "unreachable" in route.stdout


def test_the_bastion_reaches_every_inner_host(bastion_lab: Lab) -> None:
    for name in INNER:
        probe = f"exec 3<>/dev/tcp/{bastion_lab.address(name)}/22 && head -c 4 <&3"
        out = bastion_lab.nsenter("bastion-1", ["timeout", "5", "bash", "-c", probe])
        assert out.stdout == "SSH-"
    # and the web hosts reach the database on the inner network
    db = bastion_lab.address("db-1")
    out = bastion_lab.nsenter("web-1", ["timeout", "5", "bash", "-c",
                                        f"exec 3<>/dev/tcp/{db}/5432 && echo open"])
    assert out.stdout.strip() == "open"


def test_openssh_proxyjump_with_the_lab_ssh_config_and_strict_host_keys(
    bastion_lab: Lab,
) -> None:
    for name in INNER:
        out = subprocess.run(["ssh", "-F", str(bastion_lab.ssh_config), "-o", "BatchMode=yes",
                              name, "hostname"], capture_output=True, text=True, timeout=60,
                             check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == name


def test_paramiko_through_the_bastion_checks_every_host_key(bastion_lab: Lab) -> None:
    def client() -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        c.load_host_keys(str(bastion_lab.known_hosts))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        return c

    key = str(bastion_lab.identity_file)
    jump = client()
    jump.connect(bastion_lab.address("bastion-1"), username="root", key_filename=key,
                 look_for_keys=False, allow_agent=False, timeout=10)
    try:
        transport = jump.get_transport()
        assert transport is not None
        address = bastion_lab.address("web-2")
        channel = transport.open_channel("direct-tcpip", (address, 22), ("127.0.0.1", 0))
        inner = client()
        inner.connect(address, username="root", key_filename=key, sock=channel,
                      look_for_keys=False, allow_agent=False, timeout=10)
        try:
            _, stdout, _ = inner.exec_command("hostname")
            assert stdout.read().decode().strip() == "web-2"
        finally:
            inner.close()
    finally:
        jump.close()


def test_the_inventory_names_the_jump_host_of_every_inner_host(bastion_lab: Lab) -> None:
    inventory = Inventory.from_dict(bastion_lab.inventory(), source="<bastion lab>")
    bastion = f"root@{bastion_lab.address('bastion-1')}:22"
    for name in INNER:  # the bastion's name, resolved to its login where jumps are known
        assert inventory.host(name).vars["jump"] in ("bastion-1", bastion)
        assert inventory.host(name).address.startswith(
            str(bastion_lab.inner_network).rsplit(".", 1)[0])
    assert "jump" not in inventory.host("bastion-1").vars
    known = bastion_lab.known_hosts.read_text()
    for name in ("bastion-1", *INNER):
        assert f"{bastion_lab.address(name)} ssh-ed25519 " in known
