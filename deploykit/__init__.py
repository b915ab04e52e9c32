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
from deploykit.secrets import Secret

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
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
