"""A fleet of light lab hosts (sshd and a shell only): 50 of them come up, take a
workload, and a second run over all of them changes nothing.

Its own lab ``dkscale`` in DEPLOYKIT_SCALE_LAB_NETWORK (default 198.18.16.0/24),
beside the session's lab. The timings at 10 to 200 hosts live in bench/scale.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.inventory import Inventory
from deploykit.result import Status
from deploykit.runner import Runner
from deploykit.tasks import files
from deploykit.testing.lab import Lab, light_fleet

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]
if os.geteuid() != 0:
    pytest.skip("the lab needs root", allow_module_level=True)

NETWORK = os.environ.get("DEPLOYKIT_SCALE_LAB_NETWORK", "198.18.16.0/24")
HOSTS = 50


@pytest.fixture(scope="module")
def light_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(light_fleet(HOSTS), name="dkscale", network=NETWORK,
              inventory_path=tmp_path_factory.mktemp("scale") / "lab.yml")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def test_fifty_light_hosts_run_sshd_only(light_lab: Lab) -> None:
    statuses = light_lab.status()
    assert len(statuses) == HOSTS
    assert all(s.up and s.services == {"sshd": "running"} for s in statuses)


def test_a_workload_then_a_no_op_over_fifty_hosts(light_lab: Lab) -> None:
    assert light_lab.inventory_path is not None
    hosts = Inventory.load(light_lab.inventory_path).select("all")
    assert len(hosts) == HOSTS
    steps = [files.directory("/srv/scale", mode=0o755),
             files.file("/srv/scale/hello.txt", "hello\n", mode=0o644)]
    first = Runner(steps, forks=HOSTS).run(hosts)
    assert first.ok and set(first.hosts) == {h.name for h in hosts}
    assert all([r.status for r in first.hosts[h].results] == [Status.CHANGED] * 2
               for h in first.hosts)

    again = Runner(steps, forks=HOSTS)
    second = again.run(hosts)
    assert second.ok and set(second.hosts) == {h.name for h in hosts}  # every host reported
    assert all([r.status for r in second.hosts[h].results] == [Status.OK] * 2
               for h in second.hosts)
    assert all(not any(c.write for c in again.logs[h]) for h in second.hosts)
    # and the files are really on the hosts, each in its own /srv
    last = light_lab.specs[-1].name
    assert light_lab.nsenter(last, ["cat", "/srv/scale/hello.txt"]).stdout == "hello\n"
    assert not Path("/srv/scale").exists()
