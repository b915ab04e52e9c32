"""Connecting to a fleet: dead hosts cost one timeout, not one each; sshd's MaxStartups
drops are retried.

* ``connect_all`` over live lab hosts plus many unused lab addresses (nothing answers
  there): every dead host is reported, the live ones are connected, and every dead
  host's connect attempt started before the first of them timed out (all at once, not
  in waves of a pool size);
* a host whose sshd drops connections beyond MaxStartups (set to 1 here) still
  connects for every one of several concurrent connections: a reset during the SSH
  banner is retried with a jittered backoff.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Iterator

import pytest

from deploykit.connection import Connection, connect_all
from deploykit.errors import ConnectError
from deploykit.inventory import Host, Inventory
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab


def _unused(lab: Lab, count: int) -> list[str]:
    used = set(lab.addresses().values()) | {lab.gateway}
    network = lab.network
    free = [str(a) for a in network.hosts() if str(a) not in used
            and int(a) > int(network[2])]
    assert len(free) >= count, free
    return free[-count:]


def test_dead_hosts_are_reported_together_and_live_ones_connected(
        lab: Lab, lab_inventory: Inventory, caplog: pytest.LogCaptureFixture) -> None:
    live = [lab_inventory.host(spec.name) for spec in lab.specs[:2]]
    dead = [dataclasses.replace(live[0], name=f"dead-{i}", address=address)
            for i, address in enumerate(_unused(lab, 12))]
    caplog.set_level(logging.DEBUG, logger="deploykit.connection")
    opened = connect_all(live + dead, connect_timeout=2.0, handshakes=4)
    try:
        assert list(opened) == [h.name for h in live + dead]  # inventory order
        for host in live:
            assert isinstance(opened[host.name], Connection), opened[host.name]
            assert opened[host.name].run("true").ok  # type: ignore[union-attr]
        for host in dead:
            error = opened[host.name]
            assert isinstance(error, ConnectError), error
            assert error.host == host.name and host.address in str(error)
        events = [r.getMessage() for r in caplog.records if r.name == "deploykit.connection"]
        started = [i for i, m in enumerate(events) if m.startswith("tcp connect dead-")]
        failed = [i for i, m in enumerate(events) if m.startswith("tcp failed dead-")]
        assert len(started) == len(failed) == len(dead), events
        assert max(started) < min(failed), "dead hosts were tried in waves"
    finally:
        for value in opened.values():
            if isinstance(value, Connection):
                value.close()


@pytest.fixture
def strict_startups(lab: Lab) -> Iterator[Host]:
    """web-2 with ``MaxStartups 1:100:1``: a second unauthenticated connection is dropped."""
    name = lab.specs[1].name
    config = "/etc/ssh/sshd_config"
    reload = "kill -HUP $(cat /run/sshd.pid) && sleep 1"
    lab.nsenter(name, ["sh", "-c", f"sed -i 's/^MaxStartups .*/MaxStartups 1:100:1/' {config} "
                                   f"&& {reload}"])
    try:
        yield Inventory.from_dict(lab.inventory(), source="<lab>").host(name)
    finally:
        lab.nsenter(name, ["sh", "-c", f"sed -i 's/^MaxStartups .*/MaxStartups 64:30:128/' "
                                       f"{config} && {reload}"])


def test_connections_dropped_by_max_startups_are_retried(strict_startups: Host) -> None:
    aliases = [dataclasses.replace(strict_startups, name=f"alias-{i}") for i in range(6)]
    opened = connect_all(aliases, connect_timeout=5.0)
    try:
        errors = {k: str(v) for k, v in opened.items() if not isinstance(v, Connection)}
        assert errors == {}
    finally:
        for value in opened.values():
            if isinstance(value, Connection):
                value.close()


def test_unused_addresses_are_inside_the_lab_network(lab: Lab) -> None:
    for address in _unused(lab, 12):
        assert ipaddress.ip_address(address) in lab.network
