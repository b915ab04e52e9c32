"""Host keys are never trusted on their own: a changed or unknown key is refused.

The lab's known_hosts is copied and its entry for web-1 replaced by another key
(what the client sees when the host's key changed after it was first trusted),
or removed (never trusted). deploykit refuses both with a HostKeyError that says
how to check and trust the host, and never writes the known_hosts file.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.errors import HostKeyError
from deploykit.inventory import Host, Inventory

pytestmark = pytest.mark.lab


def _with_known_hosts(host: Host, path: Path) -> Host:
    return dataclasses.replace(host, known_hosts=str(path))


def _other_key(tmp_path: Path) -> str:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


def test_a_changed_host_key_is_refused_with_how_to_trust_it(
        lab_inventory: Inventory, tmp_path: Path) -> None:
    host = lab_inventory.host("web-1")
    assert host.known_hosts is not None
    Connection(host).open().close()  # trusted: the real key connects
    lines = Path(host.known_hosts).read_text().splitlines()
    mine = [line for line in lines if line.split()[0] in (host.address, f"[{host.address}]:22")]
    assert mine, lines
    changed = [f"{line.split()[0]} {_other_key(tmp_path)}" if line in mine else line
               for line in lines]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(changed) + "\n")
    before = known.read_bytes()
    with pytest.raises(HostKeyError) as info:
        Connection(_with_known_hosts(host, known)).open()
    message = str(info.value)
    assert info.value.host == "web-1"
    assert "CHANGED" in message and "This may be an attack" in message
    assert f"ssh-keygen -R {host.address} -f {known}" in message
    assert message.count("SHA256:") == 2  # both fingerprints, to compare
    assert known.read_bytes() == before  # nothing was rewritten


def test_an_unknown_host_key_is_refused_never_added(
        lab_inventory: Inventory, tmp_path: Path) -> None:
    host = lab_inventory.host("web-1")
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyError) as info:
        Connection(_with_known_hosts(host, known)).open()
    message = str(info.value)
    assert "unknown" in message and "never trusts a key on its own" in message
    assert f"ssh-keyscan -p 22 {host.address} >> {known}" in message
    assert known.read_text() == ""
    missing = tmp_path / "absent_known_hosts"
    with pytest.raises(HostKeyError):
        Connection(_with_known_hosts(host, missing)).open()
    assert not missing.exists()
