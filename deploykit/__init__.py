"""deploykit: idempotent deployment tasks run over SSH against host inventories.

The public API is what this module re-exports (below, in ``__all__``) plus these
public modules, each documented and typed:

* ``deploykit.tasks.<domain>`` (files, system, checks, http, postgres, sqlite,
  redis, nginx, releases, environments, services, compose, migrations, notify,
  flags): the tasks;
* ``deploykit.strategies.<name>`` (bluegreen, rolling, canary, phased, ...);
* ``deploykit.artifacts`` (release tarballs), ``deploykit.hooks``,
  ``deploykit.report`` (``make_reporter``), ``deploykit.verify``
  (``DeployContext``), ``deploykit.flags`` (the runtime flag API),
  ``deploykit.humanize``, ``deploykit.secrets``, ``deploykit.testing`` (the lab
  and the pytest plugin).

Anything else is an implementation detail. Logging in a plain script:
:func:`configure_logging` (``$DEPLOYKIT_LOG_LEVEL``, secrets redacted).

Re-exports are resolved lazily (PEP 562), so that importing a light submodule
(``deploykit.flags``, the runtime API apps import with only redis-py installed)
does not pull in paramiko and the rest of the SSH stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploykit.connection import CommandResult, Connection
    from deploykit.errors import (
        AuthenticationError,
        ConfigError,
        ConnectError,
        DeployError,
        HostKeyError,
        InventoryError,
        LabError,
        LockHeldError,
        RemoteCommandError,
        RollbackError,
        TaskError,
    )
    from deploykit.inventory import Host, Inventory, load_inventory
    from deploykit.logsetup import configure_logging
    from deploykit.report import make_reporter
    from deploykit.result import HostReport, Result, RunReport, Status
    from deploykit.runner import Runner, Step, step
    from deploykit.secrets import Secret
    from deploykit.task import Change, Plan, Task, UndoStack
    from deploykit.verify import DeployContext

__version__ = "0.1.0"

_EXPORTS = {
    "deploykit.connection": ("CommandResult", "Connection"),
    "deploykit.errors": ("AuthenticationError", "ConfigError", "ConnectError", "DeployError",
                         "HostKeyError", "InventoryError", "LabError", "LockHeldError",
                         "RemoteCommandError", "RollbackError", "TaskError"),
    "deploykit.inventory": ("Host", "Inventory", "load_inventory"),
    "deploykit.logsetup": ("configure_logging",),
    "deploykit.report": ("make_reporter",),
    "deploykit.result": ("HostReport", "Result", "RunReport", "Status"),
    "deploykit.runner": ("Runner", "Step", "step"),
    "deploykit.secrets": ("Secret",),
    "deploykit.task": ("Change", "Plan", "Task", "UndoStack"),
    "deploykit.verify": ("DeployContext",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AuthenticationError",
    "Change",
    "CommandResult",
    "ConfigError",
    "ConnectError",
    "Connection",
    "DeployContext",
    "DeployError",
    "Host",
    "HostKeyError",
    "HostReport",
    "Inventory",
    "InventoryError",
    "LabError",
    "LockHeldError",
    "Plan",
    "RemoteCommandError",
    "Result",
    "RollbackError",
    "RunReport",
    "Runner",
    "Secret",
    "Status",
    "Step",
    "Task",
    "TaskError",
    "UndoStack",
    "__version__",
    "configure_logging",
    "load_inventory",
    "make_reporter",
    "step",
]


def __getattr__(name: str) -> Any:
    """Import a re-exported name on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
