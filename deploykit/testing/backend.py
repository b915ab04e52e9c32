"""A testinfra backend that runs over deploykit's own SSH connection.

testinfra's paramiko backend accepts unknown host keys with a warning and
reads its settings from an ssh_config; this one uses the inventory's settings
through :class:`deploykit.connection.Connection`: strict known_hosts, the
inventory's identity file, port, user, become, and one connection per host.

It is registered with testinfra as the ``deploykit`` connection type
(:func:`register`), so testinfra's own host specs and ``--hosts``
parametrization work with it; a host spec is a deploykit selector (a host, a
group, a glob, or a comma list of them) resolved against an inventory::

    testinfra.get_host("deploykit://web-1", inventory="inventories/lab.yml")
"""

from __future__ import annotations

import os
import threading
from typing import Any

import testinfra.backend
import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory

__all__ = ["DeploykitBackend", "close_connections", "register", "testinfra_host",
           "use_inventory"]

NAME = "deploykit"
_state_lock = threading.Lock()
_default: list[Inventory] = []  # the inventory of ``pytest --inventory`` (at most one)
_loaded: dict[str, Inventory] = {}
_opened: list[Connection] = []


def register() -> None:
    """Make ``deploykit`` a testinfra connection type (idempotent)."""
    testinfra.backend.BACKENDS[NAME] = f"{__name__}.DeploykitBackend"


def use_inventory(inventory: Inventory | None) -> None:
    """The inventory host specs without one resolve against (the plugin's ``--inventory``)."""
    with _state_lock:
        _default.clear()
        if inventory is not None:
            _default.append(inventory)


def inventory_of(given: Inventory | str | os.PathLike[str] | None) -> Inventory:
    """``given`` (an Inventory, or a file loaded once), else the :func:`use_inventory` one."""
    if isinstance(given, Inventory):
        return given
    if given is not None:
        path = os.path.abspath(os.fspath(given))
        with _state_lock:
            if path not in _loaded:
                _loaded[path] = Inventory.load(path)
            return _loaded[path]
    with _state_lock:
        if _default:
            return _default[0]
    raise ConfigError("the deploykit testinfra backend needs an inventory: pass "
                      "--inventory PATH to pytest (or inventory=... to testinfra.get_host)")


def close_connections() -> None:
    """Close every connection the backend opened for host specs."""
    with _state_lock:
        opened = list(_opened)
        _opened.clear()
    for conn in opened:
        conn.close()


class DeploykitBackend(BaseBackend):  # type: ignore[misc]
    """Runs testinfra's commands through a deploykit :class:`Connection`.

    ``target`` is an open or lazy Connection, or a host name of the inventory
    (``inventory=``: an Inventory or a file; default: :func:`use_inventory`'s).
    """

    NAME = NAME

    def __init__(self, target: Connection | str, *args: Any,
                 inventory: Inventory | str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> None:
        if isinstance(target, Connection):
            self.connection = target
        else:
            self.connection = Connection(inventory_of(inventory).host(target))
            with _state_lock:
                _opened.append(self.connection)
        super().__init__(self.connection.name, *args, **kwargs)

    @classmethod
    def get_hosts(cls, host: str | None, **kwargs: Any) -> list[str]:
        """The inventory hosts a spec selects (``None``: every host)."""
        inventory = inventory_of(kwargs.get("inventory"))
        return [h.name for h in inventory.select(host or "*")]

    @property
    def inventory_host(self) -> Host:
        """The inventory host (its settings and merged vars)."""
        return self.connection.host

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        """Run a testinfra command on the host and return testinfra's result type."""
        cmd = self.get_command(command, *args)
        result = self.connection.run(cmd, check=False, write=False)
        return self.result(result.exit_code, self.encode(cmd), result.stdout_bytes,
                           result.stderr.encode())


def testinfra_host(host: Host, connection: Connection | None = None) -> testinfra.host.Host:
    """A testinfra ``Host`` for an inventory host (``host.file(...)``, ``host.service(...)``)."""
    return testinfra.host.Host(DeploykitBackend(connection or Connection(host)))
