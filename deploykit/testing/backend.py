"""A testinfra backend that runs over deploykit's own SSH connection.

testinfra's paramiko backend accepts unknown host keys with a warning and
reads its settings from an ssh_config; this one uses the inventory's settings
through :class:`deploykit.connection.Connection`: strict known_hosts, the
inventory's identity file, become, and one connection per host.
"""

from __future__ import annotations

from typing import Any

import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult

from deploykit.connection import Connection
from deploykit.inventory import Host


class DeploykitBackend(BaseBackend):  # type: ignore[misc]
    """Runs testinfra's commands through a deploykit :class:`Connection`."""

    NAME = "deploykit"

    def __init__(self, connection: Connection, *args: Any, **kwargs: Any) -> None:
        self.connection = connection
        super().__init__(connection.name, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        """Run a testinfra command on the host and return testinfra's result type."""
        cmd = self.get_command(command, *args)
        result = self.connection.run(cmd, check=False, write=False)
        return self.result(result.exit_code, self.encode(cmd), result.stdout_bytes,
                           result.stderr.encode())


def testinfra_host(host: Host, connection: Connection | None = None) -> testinfra.host.Host:
    """A testinfra ``Host`` for an inventory host (``host.file(...)``, ``host.service(...)``)."""
    return testinfra.host.Host(DeploykitBackend(connection or Connection(host)))
