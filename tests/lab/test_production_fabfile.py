"""examples/fabfile.py through the real ``fab`` command (issue 20 item 4).

fabric makes the connections from an ssh_config (aliases, HostName, User,
IdentityFile, ProxyJump through the bastion); deploykit runs its tasks on them with
strict host keys, for the bastion too. The hosts are the bastion lab's (web-1 and
web-2 only reachable through bastion-1), as root: the lab's own ssh_config.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def fab_lab(bastion_lab: Lab) -> Iterator[Lab]:
    bastion_lab.reset()
    yield bastion_lab
    bastion_lab.reset()


def fab(lab: Lab, project_root: Path, *args: str, known_hosts: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``fab -S <the lab's ssh_config> -r examples ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(project_root)}
    env.pop("DEPLOYKIT_KNOWN_HOSTS", None)
    if known_hosts is not None:
        env["DEPLOYKIT_KNOWN_HOSTS"] = str(known_hosts)
    argv = [str(project_root / ".venv" / "bin" / "fab"), "-S", str(lab.ssh_config),
            "-r", str(project_root / "examples"), *args]
    return subprocess.run(argv, cwd=project_root, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def cat(lab: Lab, host: str, path: str) -> str | None:
    done = lab.nsenter(host, ["cat", path], check=False)
    return done.stdout if done.returncode == 0 else None


def test_fab_runs_a_deploykit_task_on_its_connection_through_the_bastion(
        fab_lab: Lab, project_root: Path) -> None:
    first = fab(fab_lab, project_root, "-H", "web-1", "motd", "--path", "/srv/motd")
    assert first.returncode == 0, first.stdout + first.stderr
    assert cat(fab_lab, "web-1", "/srv/motd") == "managed by deploykit\n"
    assert cat(fab_lab, "web-2", "/srv/motd") is None
    again = fab(fab_lab, project_root, "-H", "web-1", "motd", "--path", "/srv/motd")
    assert again.returncode == 0, again.stdout + again.stderr
    assert first.stdout != again.stdout  # changed, then ok: the recap says which


def test_fab_over_several_hosts(fab_lab: Lab, project_root: Path) -> None:
    done = fab(fab_lab, project_root, "-H", "web-1,web-2", "site-task", "--root",
               "/srv/fabsite")
    assert done.returncode == 0, done.stdout + done.stderr
    for host in ("web-1", "web-2"):
        assert cat(fab_lab, host, "/srv/fabsite/site.conf") == "root=/srv/fabsite\n"


@pytest.mark.parametrize("forgotten", ["bastion-1", "web-2"])
def test_an_unknown_host_key_is_refused(fab_lab: Lab, project_root: Path, forgotten: str,
                                        tmp_path: Path) -> None:
    address = fab_lab.address(forgotten)
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in fab_lab.known_hosts.read_text()
                             .splitlines() if not line.startswith(f"{address} ")))
    done = fab(fab_lab, project_root, "-H", "web-2", "motd", "--path", "/srv/refused",
               known_hosts=known)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert address in text or forgotten in text, text
    assert "host key" in text.lower(), text
    assert cat(fab_lab, "web-2", "/srv/refused") is None
