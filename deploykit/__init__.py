"""deploykit: idempotent deployment tasks run over SSH against host inventories.

The public API is re-exported here; everything else is an implementation detail.
"""

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
from deploykit.connection import CommandResult, Connection
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
    "Connection",
    "Host",
    "HostReport",
    "Inventory",
    "Plan",
    "Result",
    "RunReport",
    "Runner",
    "Status",
    "Step",
    "Task",
    "UndoStack",
    "load_inventory",
    "step",
    "ConfigError",
    "ConnectError",
    "DeployError",
    "HostKeyError",
    "InventoryError",
    "LabError",
    "LockHeldError",
    "RemoteCommandError",
    "RollbackError",
    "Secret",
    "TaskError",
    "__version__",
]
