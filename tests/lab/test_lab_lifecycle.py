"""Building and tearing down a lab: idempotent, leaves nothing, fails clearly.

These tests build their own small labs ``dktest`` (and ``dktestb``) in
DEPLOYKIT_LIFECYCLE_NETWORK (a /27 of 198.18.0.0/15, default 198.18.0.128/27),
beside the session's lab, so they never disturb it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.errors import LabError
from deploykit.testing import labconfig
from deploykit.testing.lab import LAB_RANGE, LAB_ROUTE_METRIC, Lab, LabHostSpec

pytestmark = pytest.mark.lab
if os.geteuid() != 0:
    pytest.skip("the lab needs root", allow_module_level=True)

NETWORK = os.environ.get("DEPLOYKIT_LIFECYCLE_NETWORK", "198.18.0.128/27")
LOWER, UPPER = (str(n) for n in ipaddress.ip_network(NETWORK).subnets(new_prefix=28))
FLEET = [LabHostSpec("t-web", ("web",)), LabHostSpec("t-db", ("db",))]
LIGHT = [LabHostSpec("t-node", ("light",))]


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
    taken = ipaddress.ip_network(NETWORK)[22]
    subprocess.run(f"ip link add dkzz type veth peer name dkzy && "
                   f"ip addr add {taken}/32 dev dkzz",
                   shell=True, check=True)
    try:
        with pytest.raises(LabError,
                           match=rf"{NETWORK} is already in use on interface dkzz"):
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


def test_a_lab_refuses_a_network_a_live_lab_uses(tmp_path: Path) -> None:
    first = Lab(LIGHT, name="dktest", network=LOWER)
    intruder = Lab([LabHostSpec("t-other", ("light",))], name="dktestb", network=NETWORK)
    try:
        first.up()
        with pytest.raises(LabError, match=rf"overlaps {LOWER} of the running lab 'dktest'"):
            intruder.up()
        assert "dktestb-" not in _sh("ip netns list")  # nothing of it was built
        assert first.is_up()
    finally:
        intruder.down()
        first.down()


def _lab_route() -> str:
    return _sh(f"ip route show {LAB_RANGE} metric {LAB_ROUTE_METRIC}").strip()


def test_lab_down_keeps_the_unreachable_route_while_another_lab_is_up() -> None:
    first = Lab(LIGHT, name="dktest", network=LOWER)
    second = Lab([LabHostSpec("t-other", ("light",))], name="dktestb", network=UPPER)
    try:
        first.up()
        second.up()
        first.down()
        assert _lab_route().startswith(f"unreachable {LAB_RANGE}")
        # and the route still does its job: nothing of the lab range leaves the machine
        route = _sh(f"ip route get {ipaddress.ip_network(LOWER)[11]} 2>&1")
        assert "unreachable" in route or "No route to host" in route
    finally:
        second.down()
        first.down()


def test_invoke_lab_down_with_inventory_takes_down_the_lab_it_describes(
    project_root: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "other-lab.yml"
    lab = Lab(LIGHT, name="dktest", network=LOWER, inventory_path=inventory)
    try:
        lab.up()
        # the default lab of this environment is another one (which does not exist)
        env = {**os.environ, "DEPLOYKIT_LAB_NAME": "dknone", "DEPLOYKIT_LAB_NETWORK": UPPER}
        out = _cli(project_root, "lab.down", "--inventory", str(inventory), env=env)
        assert out.returncode == 0, out.stderr
        assert f"lab dktest ({LOWER}) down" in out.stdout
        assert _traces(lab) == {k: "" for k in _traces(lab)}
        assert not inventory.exists()
    finally:
        lab.down()


def test_invoke_lab_down_with_a_file_that_is_no_lab_inventory_is_one_clear_error(
    project_root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "production.yml"
    other.write_text("all:\n  hosts:\n    web-1: {address: 10.0.0.1}\n")
    out = _cli(project_root, "lab.down", "--inventory", str(other))
    assert out.returncode == 1
    assert out.stderr.strip() == (f"error: {other} is not a lab inventory (no all.vars lab_name "
                                  "and lab_network: it was not written by invoke lab.up)")
    assert other.exists()
