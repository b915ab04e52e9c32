"""The testinfra half of deploykit's pytest plugin (registered by
:mod:`deploykit.testing.plugin` only when pytest-testinfra is installed).

``--inventory`` serves testinfra's hosts from a deploykit inventory; fixtures
``host_vars``, ``deploy_context`` and ``lab_host``; ``--deploykit-results``
records each test's outcome per host.
"""

from __future__ import annotations

import json
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
from deploykit.testing.plugin import MARKERS
from deploykit.verify import DeployContext, context_from_host

_RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()


def configure(config: pytest.Config) -> None:
    """With ``--inventory``, serve testinfra's hosts from it (called by the plugin's
    ``pytest_configure``, which registers this module first)."""
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
    """Name each test's inventory host in its properties (the JUnit XML's testcase)."""
    for item in items:
        host = _item_host(item)
        if host is not None:
            item.user_properties.append(("host", host))


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
