"""known_hosts as OpenSSH writes it, identity files and port vars: one clear error, no traceback.

* ``@revoked`` marks a key that must never be accepted: a host presenting it is refused
  with a HostKeyError saying so (even when another line lists the same key);
* ``@cert-authority`` lines (host certificates, which paramiko cannot verify) load
  without crashing: hosts known by their own key still connect; a host known only
  through a CA is refused with a message saying why and what to add;
* wildcard host patterns (``198.18.4.*``) are honoured as OpenSSH does;
* an ``identity_file`` that is a public key is an AuthenticationError naming the file;
* a non-numeric ``redis_port`` (any ``*_port`` var) is an InventoryError naming the
  file and the host.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.errors import AuthenticationError, HostKeyError, InventoryError
from deploykit.inventory import Host, Inventory


def _other_key(tmp_path: Path, name: str = "other") -> str:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


def _host_key(host: Host) -> str:
    assert host.known_hosts is not None
    for line in Path(host.known_hosts).read_text().splitlines():
        if line.split()[0] == host.address:
            return " ".join(line.split()[1:3])
    raise AssertionError(f"no key for {host.address}")


def _with(host: Host, known: Path) -> Host:
    return dataclasses.replace(host, known_hosts=str(known))


@pytest.mark.lab
def test_cert_authority_lines_load_and_known_hosts_still_connect(
        lab_inventory: Inventory, tmp_path: Path) -> None:
    host = lab_inventory.host("web-1")
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority *.example.com {_other_key(tmp_path)}\n"
                     f"{host.address} {_host_key(host)}\n")
    with Connection(_with(host, known)) as conn:
        assert conn.run("echo ok").stdout.strip() == "ok"


@pytest.mark.lab
def test_a_host_known_only_through_a_cert_authority_is_refused_saying_why(
        lab_inventory: Inventory, tmp_path: Path) -> None:
    host = lab_inventory.host("web-1")
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority * {_other_key(tmp_path)}\n")
    with pytest.raises(HostKeyError) as info:
        Connection(_with(host, known)).open()
    message = str(info.value)
    assert "@cert-authority" in message and "certificate" in message
    assert f"ssh-keyscan -p {host.port} {host.address}" in message
    assert info.value.host == "web-1"


@pytest.mark.lab
def test_a_revoked_host_key_is_refused_even_when_listed(
        lab_inventory: Inventory, tmp_path: Path) -> None:
    host = lab_inventory.host("web-1")
    key = _host_key(host)
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked * {key}\n{host.address} {key}\n")
    before = known.read_bytes()
    with pytest.raises(HostKeyError) as info:
        Connection(_with(host, known)).open()
    message = str(info.value)
    assert "REVOKED" in message and str(known) in message and "line 1" in message
    assert known.read_bytes() == before


@pytest.mark.lab
def test_wildcard_host_patterns_are_honoured(lab_inventory: Inventory, tmp_path: Path) -> None:
    host = lab_inventory.host("web-1")
    network = host.address.rsplit(".", 1)[0]
    known = tmp_path / "known_hosts"
    known.write_text(f"{network}.*,!10.0.0.1 {_host_key(host)}\n")
    with Connection(_with(host, known)) as conn:
        assert conn.run("true").ok
    known.write_text(f"{network}.*,!{host.address} {_host_key(host)}\n")  # negated
    with pytest.raises(HostKeyError, match="unknown"):
        Connection(_with(host, known)).open()


def test_a_public_key_as_identity_file_is_a_clear_error(tmp_path: Path) -> None:
    _other_key(tmp_path, "id")
    pub = tmp_path / "id.pub"
    host = Host(name="web-9", address="198.18.4.1", identity_file=str(pub),
                known_hosts=str(tmp_path / "kh"))
    with pytest.raises(AuthenticationError) as info:
        Connection(host, connect_timeout=0.5).open()
    message = str(info.value)
    assert str(pub) in message and "public key" in message
    assert str(tmp_path / "id") in message  # the private key to use instead
    assert info.value.host == "web-9"


def test_a_file_that_is_no_key_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    host = Host(name="web-9", address="198.18.4.1", identity_file=str(junk))
    with pytest.raises(AuthenticationError, match=f"identity file {junk}"):
        Connection(host, connect_timeout=0.5).open()


@pytest.mark.parametrize("var", ["redis_port", "postgres_port", "app_port"])
@pytest.mark.parametrize("value", ["x6379", "63 79", "0", "70000", "6379.5", True])
def test_a_bad_port_var_is_an_inventory_error(var: str, value: object) -> None:
    with pytest.raises(InventoryError) as info:
        Inventory.from_dict({"all": {"hosts": {"db-1": {"address": "10.0.0.5", var: value}}}},
                            source="inventory.yml")
    assert "inventory.yml" in str(info.value) and var in str(info.value)
    assert "db-1" in str(info.value)


def test_a_numeric_string_port_var_is_accepted_as_a_number() -> None:
    inv = Inventory.from_dict({"all": {"hosts": {"db-1": {"address": "10.0.0.5",
                                                          "redis_port": "6380"}}}},
                              source="inventory.yml")
    assert inv.host("db-1").vars["redis_port"] == 6380
