"""Building and tearing down a lab: idempotent, leaves nothing, fails clearly.

These tests build their own small lab ``dktest`` in 198.18.0.128/27, beside the
session's lab, so they never disturb it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.errors import LabError
from deploykit.testing import labconfig
from deploykit.testing.lab import Lab, LabHostSpec

pytestmark = pytest.mark.lab
if os.geteuid() != 0:
    pytest.skip("the lab needs root", allow_module_level=True)

NETWORK = "198.18.0.128/27"
FLEET = [LabHostSpec("t-web", ("web",)), LabHostSpec("t-db", ("db",))]


def _sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout


def _traces(lab: Lab) -> dict[str, str]:
    """Everything of the test lab visible from the root namespace."""
    return {
        "netns": "\n".join(line for line in _sh("ip netns list").splitlines()
                            if line.startswith("dktest-")),
        "links": "\n".join(line for line in _sh("ip -o link show").splitlines()
                            if " dktest" in line),
        "mounts": "\n".join(line for line in _sh("findmnt -rn -o TARGET,SOURCE").splitlines()
                            if "dktest" in line),
        "processes": "\n".join(line for line in _sh("ps -eo pid,stat,args").splitlines()
                               if str(lab.state_dir) in line and " Z" not in line),
        "files": "present" if lab.state_dir.exists() else "",
    }


@pytest.fixture
def test_lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(FLEET, name="dktest", network=NETWORK, inventory_path=tmp_path / "lab.yml")
    try:
        yield lab
    finally:
        lab.down()


def test_up_twice_then_down_leaves_nothing(test_lab: Lab) -> None:
    first = test_lab.up()
    assert all(h.up for h in first)
    anchors = {s.name: test_lab._anchor_pid(s.name) for s in FLEET}
    host_pids = {ns: sorted(_sh(f"ip netns pids {ns}").split())
                 for ns in ("dktest-t-web", "dktest-t-db")}

    second = test_lab.up()  # idempotent: the same hosts and processes, nothing doubled
    assert [h.services for h in second] == [h.services for h in first]
    assert {s.name: test_lab._anchor_pid(s.name) for s in FLEET} == anchors
    assert {ns: sorted(_sh(f"ip netns pids {ns}").split()) for ns in host_pids} == host_pids
    assert _sh("ip netns list").count("dktest-") == 2
    assert test_lab.inventory_path is not None and test_lab.inventory_path.exists()
    all_pids = [int(p) for pids in host_pids.values() for p in pids]
    assert len(all_pids) >= 6  # anchors, sshds, nginx, supervisord, postgres, redis

    test_lab.down()
    assert _traces(test_lab) == {k: "" for k in _traces(test_lab)}
    assert not test_lab.inventory_path.exists()
    for pid in all_pids:  # every process the lab started is gone (or an unreaped zombie)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_down_after_a_crash_removes_what_the_state_files_forgot(test_lab: Lab) -> None:
    test_lab.up()
    # simulate a crashed session: the state directory is gone, the kernel objects are not
    subprocess.run(["rm", "-rf", str(test_lab.state_dir)], check=True)
    Lab(FLEET, name="dktest", network=NETWORK).down()
    assert _traces(test_lab) == {k: "" for k in _traces(test_lab)}


def test_address_range_in_use_is_a_clear_error(test_lab: Lab) -> None:
    subprocess.run("ip link add dkzz type veth peer name dkzy && "
                   "ip addr add 198.18.0.150/32 dev dkzz",
                   shell=True, check=True)
    try:
        with pytest.raises(LabError,
                           match=r"198\.18\.0\.128/27 is already in use on interface dkzz"):
            test_lab.up()
    finally:
        subprocess.run(["ip", "link", "delete", "dkzz"], check=True)


def test_host_that_fails_to_start_shows_its_log(
    test_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labconfig, "SSHD_CONFIG", labconfig.SSHD_CONFIG + "NoSuchOption yes\n")
    with pytest.raises(LabError) as err:
        test_lab.up()
    message = str(err.value)
    assert "t-web" in message and "services did not start" in message
    assert "NoSuchOption" in message  # the tail of the host's sshd log


def _cli(project_root: Path, *args: str, env: dict[str, str] | None = None,
         as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the project's invoke tasks in a child process, optionally as an unprivileged user."""
    code = ("import os, sys; sys.path.insert(0, os.getcwd()); import tasks; "
            "from invoke import Program; "
            + ("os.setegid(65534); os.seteuid(65534); " if as_nobody else "")
            + f"Program(namespace=tasks.ns).run(['invoke', *{list(args)!r}])")
    return subprocess.run([sys.executable, "-c", code], cwd=project_root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_lab_up_as_non_root_is_one_clear_error(project_root: Path) -> None:
    env = {**os.environ, "HOME": "/nonexistent"}  # root's home is not readable by nobody
    out = _cli(project_root, "lab.up", env=env, as_nobody=True)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: the lab needs root (it creates network namespaces); "
                                  "run as root, e.g. sudo invoke lab.up")
    assert "Traceback" not in out.stderr


def test_missing_program_names_the_apt_package(project_root: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    out = _cli(project_root, "lab.up", env=env)
    assert out.returncode == 1
    assert "apt-get install" in out.stderr and "iproute2" in out.stderr
    assert "Traceback" not in out.stderr
