"""Which hosts a day-2 command acts on."""

from __future__ import annotations

from collections.abc import Sequence

from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory


def select_hosts(inventory: Inventory, default: Sequence[Host], *, host: str | None = None,
                 group: str | None = None) -> list[Host]:
    """The hosts ``--host`` or ``--group`` select in ``inventory`` (any host of it, not only
    the app's web hosts), else ``default``; a ConfigError when both are given."""
    if host and group:
        raise ConfigError("give --host or --group, not both")
    chosen = host or group
    hosts = inventory.select(chosen) if chosen else list(default)
    if not hosts:
        raise ConfigError("no host selected")
    return hosts
