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
``module_lab``     the same lab, reset before and after the module only: its tests
                   share one deployed fleet (deploy in a module-scoped fixture)
``lab_inventory``  the lab as a :class:`~deploykit.inventory.Inventory`
``lab_deploy_inventory``  the same, logging in as ``deploy`` with ``become`` (sudo)
``bastion_lab``    another lab whose web and db hosts are reachable only through
                   its bastion host (DEPLOYKIT_BASTION_LAB_NAME, _NETWORK, _INNER_NETWORK)
``lab_host``       ``lab_host("web-1")`` -> a testinfra host over deploykit's SSH
``lab_connection`` ``lab_connection("web-1")`` -> a fresh deploykit Connection

The inventory hosts, ``lab_host``, ``--inventory`` and ``--deploykit-results`` need
pytest-testinfra (``pip install 'deploykit[testinfra]'``): without it the plugin
registers its options and the lab fixtures only, and using one of those options
is one clear usage error saying how to install it; pytest itself always starts.
Their hooks and fixtures live in :mod:`deploykit.testing.testinfra_plugin`.

Tests that use the lab are marked ``@pytest.mark.lab`` (fixtures mark them
too) and are skipped with a reason when the session is not root. Set
``DEPLOYKIT_LAB_HOSTS`` (e.g. ``"10"`` or ``"web-1:web,db-1:db"``) to change the fleet.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.testing.lab import Lab, bastion_fleet, default_fleet, parse_fleet
from deploykit.verify import DeployContext

NOT_ROOT_REASON = "the lab needs root (network namespaces); run the suite as root"
MARKERS = {
    "lab": "needs the lab fleet (root, network namespaces); skipped when not root",
    "pre_switch": "a deploy gate runs it against the idle colour, before traffic moves",
    "post_switch": "a deploy gate runs it after traffic moved (failure: switched back)",
}
LAB_FIXTURES = frozenset({"lab", "clean_lab", "module_lab", "lab_inventory", "lab_host",
                          "lab_connection", "lab_deploy_inventory", "bastion_lab"})
BASTION_LAB_ENV = {"name": ("DEPLOYKIT_BASTION_LAB_NAME", "dkbast"),
                   "network": ("DEPLOYKIT_BASTION_LAB_NETWORK", "198.18.1.0/27"),
                   "inner_network": ("DEPLOYKIT_BASTION_LAB_INNER_NETWORK", "198.18.1.32/27")}
TESTINFRA_HINT = ("needs pytest-testinfra, which is not installed; install it with: "
                  "pip install 'deploykit[testinfra]'")
TESTINFRA_PLUGIN = "deploykit.testing.testinfra_plugin"


def have_testinfra() -> bool:
    """True when pytest-testinfra is importable."""
    return importlib.util.find_spec("testinfra") is not None


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--inventory``, ``--deploy-<field>`` and ``--deploykit-results``."""
    group = parser.getgroup("deploykit", "deploykit inventory hosts")
    needs = "" if have_testinfra() else " (needs 'deploykit[testinfra]')"
    group.addoption("--inventory", dest="deploykit_inventory", metavar="PATH",
                    help="a deploykit inventory: --hosts (default: every host) is then a "
                         "deploykit selector (host, group, glob, comma list), reached over "
                         f"deploykit's SSH (strict known_hosts){needs}")
    for name in DeployContext.names():
        env = DeployContext.ENV.format(name.upper())
        group.addoption(DeployContext.OPTION.format(name), dest=f"deploykit_deploy_{name}",
                        metavar=name.upper(),
                        help=f"deploy_context.{name} (default: ${env}, else read from the host)")
    group.addoption("--deploykit-results", dest="deploykit_results", metavar="PATH",
                    help=f"write every test's outcome per host as JSON to PATH{needs}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers; with testinfra, the inventory hosts' hooks and fixtures."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if have_testinfra():
        if not config.pluginmanager.has_plugin(TESTINFRA_PLUGIN):
            module = importlib.import_module(TESTINFRA_PLUGIN)
            config.pluginmanager.register(module, TESTINFRA_PLUGIN)
            module.configure(config)
        return
    for option, flag in (("deploykit_inventory", "--inventory"),
                         ("deploykit_results", "--deploykit-results")):
        if config.getoption(option, None):
            raise pytest.UsageError(f"{flag} {TESTINFRA_HINT}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark lab tests (skipped when not root); before ``-m`` selects by marker."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if LAB_FIXTURES & fixtures:
            item.add_marker(pytest.mark.lab)
        if item.get_closest_marker("lab") and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT_REASON))
        if "lab_host" in fixtures and not have_testinfra():
            item.add_marker(pytest.mark.skip(reason=f"lab_host {TESTINFRA_HINT}"))


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


@pytest.fixture(scope="session")
def bastion_lab() -> Iterator[Lab]:
    """A second lab in a bastion topology (:func:`~deploykit.testing.lab.bastion_fleet`):
    ``bastion-1`` bridges the lab network and an inner one where web-1, web-2 and db-1
    live, with no route to them from the controller; their inventory entries carry
    ``jump: bastion-1``. Up once per session, always torn down. Its name and networks
    come from DEPLOYKIT_BASTION_LAB_NAME, _NETWORK and _INNER_NETWORK."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT_REASON)
    where = {key: os.environ.get(env, default) for key, (env, default) in BASTION_LAB_ENV.items()}
    fleet = Lab(bastion_fleet(), name=where["name"], network=where["network"],
                inner_network=where["inner_network"])
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


@pytest.fixture(scope="module")
def module_lab(lab: Lab) -> Iterator[Lab]:
    """The session's lab, reset before and after this module but not between its tests:
    for a module whose tests share one deployed fleet (deploy once in a module-scoped
    fixture that takes ``module_lab``, then each test reads or builds on that state)."""
    lab.reset()
    yield lab
    lab.reset()


@pytest.fixture(scope="session")
def lab_deploy_inventory(lab: Lab) -> Inventory:
    """The lab fleet as an inventory that logs in as the non-root ``deploy`` user with
    ``become`` (passwordless sudo)."""
    return Inventory.from_dict(lab.inventory(user="deploy"), source="<lab deploy>")


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
