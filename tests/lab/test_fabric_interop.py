"""deploykit tasks on a user's fabric.Connection and fabric.Group (issue 20 item 4):
the fabfile example over real SSH, strict host keys, TCP_NODELAY."""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import fabric
import pytest

from deploykit.connection import Connection
from deploykit.errors import HostKeyError
from deploykit.fabric_interop import from_fabric, run_on_fabric
from deploykit.runner import Runner
from deploykit.tasks import files, system
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]
FABFILE = Path(__file__).resolve().parents[2] / "examples" / "fabfile.py"


def _fabfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dk_example_fabfile", FABFILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fabric(lab: Lab, name: str) -> fabric.Connection:
    return fabric.Connection(lab.address(name), user="root", connect_kwargs={
        "key_filename": str(lab.identity_file), "look_for_keys": False, "allow_agent": False})


def test_the_fabfile_runs_a_deploykit_task_on_a_fabric_connection_and_group(
    clean_lab: Lab, lab_connection: Ssh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYKIT_KNOWN_HOSTS", str(clean_lab.known_hosts))
    fab = _fabfile()
    one = _fabric(clean_lab, "web-1")
    first = fab.motd(one, "/srv/motd")  # /srv is the lab host's own (/etc is shared)
    assert [r.status.value for r in first.hosts[clean_lab.address("web-1")].results] == [
        "changed"]
    again = fab.motd(one, "/srv/motd")
    assert again.hosts[clean_lab.address("web-1")].results[0].status.value == "ok"
    assert one.is_connected  # deploykit leaves the caller's connection open
    assert one.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert lab_connection("web-1").run("cat /srv/motd").stdout == "managed by deploykit\n"

    group = fabric.ThreadingGroup.from_connections(
        [_fabric(clean_lab, "web-1"), _fabric(clean_lab, "web-2")])
    report = fab.site(group, "/srv/fabsite")
    assert sorted(report.hosts) == sorted(clean_lab.address(n) for n in ("web-1", "web-2"))
    for name in ("web-1", "web-2"):
        assert lab_connection(name).run("cat /srv/fabsite/site.conf").stdout == \
            "root=/srv/fabsite\n"
    # fabric's own run still works on the same connection afterwards
    assert group[0].run("test -d /srv/fabsite", hide=True, in_stream=False).ok


def test_fleet_undo_and_one_recap_over_a_fabric_group(
    clean_lab: Lab, lab_connection: Ssh
) -> None:
    group = fabric.Group.from_connections([_fabric(clean_lab, "web-1"),
                                           _fabric(clean_lab, "web-2")])
    steps = [files.file("/srv/release", "v2\n"),
             system.command('test "$(hostname)" != web-2', name="smoke test")]
    report = run_on_fabric(Runner(steps, undo="fleet"), group,
                           known_hosts=clean_lab.known_hosts)
    assert report.failed
    for name in ("web-1", "web-2"):
        assert lab_connection(name).run("test -e /srv/release", check=False).exit_code == 1
        assert report.hosts[clean_lab.address(name)].undone


def _assert_refused(fc: fabric.Connection, known_hosts: Path, reason: str) -> None:
    """Opening raises HostKeyError; a task run on it fails saying why."""
    with pytest.raises(HostKeyError, match=reason):
        from_fabric(fc, known_hosts=known_hosts).open()
    refused = files.directory("/srv/never").run(from_fabric(fc, known_hosts=known_hosts))
    assert refused.failed and reason in refused.message


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """A known_hosts file that trusts nobody."""
    path = tmp_path / "known_hosts"
    path.write_text("")
    return path


def test_an_unknown_host_key_is_refused_before_logging_in(clean_lab: Lab, empty: Path) -> None:
    fc = _fabric(clean_lab, "web-1")
    _assert_refused(fc, empty, "deploykit never trusts a key on its own")
    assert not fc.is_connected
    report = run_on_fabric(files.directory("/srv/never"), _fabric(clean_lab, "web-1"),
                           known_hosts=empty)
    entry = report.hosts[clean_lab.address("web-1")]
    assert entry.unreachable and "ssh-keyscan" in entry.error


def test_an_open_fabric_connection_that_auto_added_the_key_is_refused(
    clean_lab: Lab, empty: Path
) -> None:
    fc = _fabric(clean_lab, "web-1")
    fc.open()  # fabric's default AutoAddPolicy: any key accepted
    _assert_refused(fc, empty, "AutoAddPolicy")
    # the same open connection is fine once its key is the one known_hosts holds
    result = files.directory("/srv/known").run(
        from_fabric(fc, known_hosts=clean_lab.known_hosts))
    assert result.changed
    fc.close()
