"""deploykit: idempotent deployment tasks run over SSH against host inventories.

The public API is re-exported here; everything else is an implementation detail.
"""

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
from deploykit.result import HostReport, Result, RunReport, Status
from deploykit.runner import Runner, Step, step
from deploykit.secrets import Secret
from deploykit.task import Change, Plan, Task, UndoStack

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Change",
    "CommandResult",
    "ConfigError",
    "ConnectError",
    "Connection",
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
    "load_inventory",
    "step",
]
