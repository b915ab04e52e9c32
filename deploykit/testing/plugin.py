"""pytest plugin: testinfra hosts from a deploykit inventory, and the lab fleet.

Registered through the ``pytest11`` entry point, so any project that installs
deploykit gets it.

**Inventory-aware testinfra.** ``pytest --inventory inventories/production.yml
--hosts web`` runs a testinfra suite against the hosts the selector picks (a
host, a group, a glob, or a comma list of them, as everywhere in deploykit;
without ``--hosts``: every host). testinfra's own ``--hosts`` option and
``host`` fixture parametrization are used as they are; ``--inventory`` makes
the host specs deploykit selectors served by the ``deploykit`` testinfra
backend (:mod:`deploykit.testing.backend`), which connects with the
inventory's address, port, user, identity file, strict known_hosts and become:
no ssh_config to keep beside the inventory, and an unknown host key fails the
host's tests with the message saying how to trust it. Fixtures:

``host``            testinfra's, one per selected host (test ids ``[deploykit://web-1]``)
``host_vars``       the host's merged inventory vars (``host_vars["app_port"]``)
``deploy_context``  a :class:`~deploykit.verify.DeployContext`: app, version,
                    release, colour, port, program and phase being verified, from
                    ``--deploy-<field>`` options (the deploy gates pass them) or
                    ``DEPLOYKIT_<FIELD>`` variables, the rest read from the host

Markers ``pre_switch`` and ``post_switch`` choose which tests a deploy gate runs
before and after traffic moves. ``--deploykit-results PATH`` writes every test's
outcome, per host, as JSON (what :mod:`deploykit.verify` reads).

**The lab.**

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

import json
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import testinfra.host

from deploykit.connection import Connection
from deploykit.errors import DeployError
from deploykit.inventory import Inventory
from deploykit.testing import backend
from deploykit.testing.backend import DeploykitBackend, testinfra_host
from deploykit.testing.lab import Lab, default_fleet, parse_fleet
from deploykit.verify import DeployContext, context_from_host

NOT_ROOT_REASON = "the lab needs root (network namespaces); run the suite as root"
MARKERS = {
    "lab": "needs the lab fleet (root, network namespaces); skipped when not root",
    "pre_switch": "a deploy gate runs it against the idle colour, before traffic moves",
    "post_switch": "a deploy gate runs it after traffic moved (failure: switched back)",
}
_RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--inventory``, ``--deploy-<field>`` and ``--deploykit-results``."""
    group = parser.getgroup("deploykit", "deploykit inventory hosts")
    group.addoption("--inventory", dest="deploykit_inventory", metavar="PATH",
                    help="a deploykit inventory: --hosts (default: every host) is then a "
                         "deploykit selector (host, group, glob, comma list), reached over "
                         "deploykit's SSH (strict known_hosts)")
    for name in DeployContext.names():
        env = DeployContext.ENV.format(name.upper())
        group.addoption(DeployContext.OPTION.format(name), dest=f"deploykit_deploy_{name}",
                        metavar=name.upper(),
                        help=f"deploy_context.{name} (default: ${env}, else read from the host)")
    group.addoption("--deploykit-results", dest="deploykit_results", metavar="PATH",
                    help="write every test's outcome per host as JSON to PATH")


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers; with ``--inventory``, serve testinfra's hosts from it."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("deploykit_results", None):
        config.stash[_RESULTS] = {}
    path = config.getoption("deploykit_inventory", None)
    if not path:
        return
    connection = config.getoption("connection", None)
    if connection not in (None, backend.NAME):
        raise pytest.UsageError(f"--inventory reaches hosts with deploykit's SSH: drop "
                                f"--connection {connection}")
    try:
        inventory = Inventory.load(path)
        inventory.select(config.getoption("hosts", None) or "*")
        DeployContext.from_values(_context_options(config))
    except DeployError as exc:
        raise pytest.UsageError(str(exc)) from None
    backend.register()
    backend.use_inventory(inventory)
    config.option.connection = backend.NAME


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the inventory hosts' connections; write ``--deploykit-results``."""
    backend.close_connections()
    if config.getoption("deploykit_inventory", None):
        backend.use_inventory(None)
    results = config.stash.get(_RESULTS, None)
    path = config.getoption("deploykit_results", None)
    if results is not None and path:
        Path(path).write_text(json.dumps(list(results.values()), indent=1) + "\n",
                              encoding="utf-8")


def _context_options(config: pytest.Config) -> dict[str, object]:
    return {name: config.getoption(f"deploykit_deploy_{name}", None)
            for name in DeployContext.names()}


def _item_host(item: pytest.Item) -> str | None:
    """The inventory host a test item runs against (testinfra's parameter), if any."""
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("_testinfra_host") if callspec is not None else None
    if isinstance(param, testinfra.host.Host):
        return str(param.backend.get_hostname())
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark lab tests (skipped when not root); name each test's host in its properties."""
    lab_fixtures = {"lab", "clean_lab", "lab_inventory", "lab_host", "lab_connection"}
    for item in items:
        if lab_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
        if item.get_closest_marker("lab") and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT_REASON))
        host = _item_host(item)
        if host is not None:
            item.user_properties.append(("host", host))  # in the JUnit XML's testcase


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """In a test on an inventory host, a deploykit error (host unreachable, unknown host
    key) is one line, no traceback; record the outcome for ``--deploykit-results``."""
    report = yield
    host = _item_host(item)
    if host is not None and call.excinfo is not None \
            and isinstance(call.excinfo.value, DeployError) and report.failed:
        error = call.excinfo.value
        report.longrepr = str(error) if error.host else f"{host}: {error}"
    results = item.config.stash.get(_RESULTS, None)
    if results is not None:
        _record(results, item, report)
    return report


def _record(results: dict[str, dict[str, Any]], item: pytest.Item,
            report: pytest.TestReport) -> None:
    """One entry per test: the call's outcome, else a setup skip; a failed setup or
    teardown is an ``error``."""
    if report.when != "call" and not report.failed and not report.skipped:
        return
    outcome = "error" if report.failed and report.when != "call" else report.outcome
    message = ""
    if report.failed or report.skipped:
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            message = crash.message
        elif isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        else:
            lines = str(report.longrepr).strip().splitlines()
            message = lines[-1] if lines else ""
    results[item.nodeid] = {
        "host": _item_host(item) or "", "name": getattr(item, "originalname", item.name),
        "nodeid": item.nodeid, "outcome": outcome, "duration": round(report.duration, 4),
        "message": (message.strip().splitlines() or [""])[0][:300],
        "markers": sorted({m.name for m in item.iter_markers()} & set(MARKERS))}


# -- inventory hosts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_vars(host: testinfra.host.Host) -> Mapping[str, Any]:
    """The testinfra host's merged inventory vars (empty for hosts of other backends)."""
    if isinstance(host.backend, DeploykitBackend):
        return dict(host.backend.inventory_host.vars)
    return {}


_contexts: dict[str, DeployContext] = {}


@pytest.fixture(scope="module")
def deploy_context(host: testinfra.host.Host, request: pytest.FixtureRequest) -> DeployContext:
    """What is being verified on this host: options/environment first, the host for the rest."""
    try:
        given = DeployContext.from_values(_context_options(request.config))
    except DeployError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not isinstance(host.backend, DeploykitBackend):
        return given
    name = host.backend.get_hostname()
    if name not in _contexts:
        error = ""
        try:
            _contexts[name] = context_from_host(host.backend.connection, given)
        except DeployError as exc:
            error = str(exc) if exc.host else f"{name}: {exc}"
        if error:
            pytest.fail(error, pytrace=False)
    return _contexts[name]


# -- the lab -----------------------------------------------------------------------------------


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
