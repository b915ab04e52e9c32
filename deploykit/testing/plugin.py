"""pytest plugin: the lab fleet and testinfra hosts bound to it.

Registered through the ``pytest11`` entry point, so any project that installs
deploykit gets these fixtures:

``lab``            session-scoped :class:`~deploykit.testing.lab.Lab`, brought up
                   once and always torn down (even when tests fail)
``clean_lab``      the same lab, reset after the test (no rebuild)
``lab_inventory``  the lab as a :class:`~deploykit.inventory.Inventory`
``lab_host``       ``lab_host("web-1")`` -> a testinfra host over deploykit's SSH
``lab_connection`` ``lab_connection("web-1")`` -> a fresh deploykit Connection

Tests that use the lab are marked ``@pytest.mark.lab`` (fixtures mark them
too) and are skipped with a reason when the session is not root. Set
``DEPLOYKIT_LAB_HOSTS`` (e.g. ``"10"`` or ``"web-1:web,db-1:db"``) to change the fleet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import testinfra.host

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.testing.backend import testinfra_host
from deploykit.testing.lab import Lab, default_fleet, parse_fleet

NOT_ROOT_REASON = "the lab needs root (network namespaces); run the suite as root"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``lab`` marker."""
    config.addinivalue_line(
        "markers", "lab: needs the lab fleet (root, network namespaces); skipped when not root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a lab fixture, and skip them all when not root."""
    lab_fixtures = {"lab", "clean_lab", "lab_inventory", "lab_host", "lab_connection"}
    for item in items:
        if lab_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
        if item.get_closest_marker("lab") and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT_REASON))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab fleet for this test session: up once, always torn down."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT_REASON)
    spec = os.environ.get("DEPLOYKIT_LAB_HOSTS")
    fleet = Lab(parse_fleet(spec) if spec else default_fleet())
    try:
        fleet.up()
        yield fleet
    finally:
        fleet.down()


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The session's lab, reset after the test (empty /srv, /var/backups, /tmp; services up)."""
    yield lab
    lab.reset()


@pytest.fixture(scope="session")
def lab_inventory(lab: Lab) -> Inventory:
    """The lab fleet as a deploykit inventory."""
    return Inventory.from_dict(lab.inventory(), source="<lab>")


@pytest.fixture(scope="session")
def lab_connection(lab_inventory: Inventory) -> Iterator[Callable[[str], Connection]]:
    """``lab_connection(name)``: a new deploykit Connection to a lab host (closed at the end)."""
    opened: list[Connection] = []

    def connect(name: str) -> Connection:
        conn = Connection(lab_inventory.host(name))
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture(scope="session")
def lab_host(lab_inventory: Inventory) -> Iterator[Callable[[str], testinfra.host.Host]]:
    """``lab_host(name)``: a testinfra host for a lab host, one connection per host."""
    hosts: dict[str, testinfra.host.Host] = {}
    connections: list[Connection] = []

    def get(name: str) -> testinfra.host.Host:
        if name not in hosts:
            conn = Connection(lab_inventory.host(name))
            connections.append(conn)
            hosts[name] = testinfra_host(conn.host, conn)
        return hosts[name]

    yield get
    for conn in connections:
        conn.close()
