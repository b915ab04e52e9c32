"""The deploykit exception tree.

Every error a user can meet is one of these, and its message names what went
wrong and where (file, line, host, task)::

    DeployError                    base: catch this to catch everything deploykit raises
     ├── ConfigError               bad configuration (deploykit.yml, arguments); a ValueError
     ├── InventoryError            bad inventory file or selector
     ├── ConnectError              a host could not be reached or logged in to
     │    ├── HostKeyError         unknown or changed host key (never auto-accepted)
     │    └── AuthenticationError  key or password refused
     ├── TaskError                 a task failed on a host
     │    ├── RemoteCommandError   a remote command exited non-zero
     │    ├── HttpCheckError       an HTTP check failed (tasks/http.py)
     │    ├── NginxChangeError     an nginx change was refused and restored (tasks/nginx.py)
     │    ├── PreflightError       pre-flight checks failed (tasks/checks.py)
     │    └── HookError            a user hook failed (hooks.py); a pre_* one stops the run
     ├── LockHeldError             another deploy holds the host's lock
     ├── RollbackError             an undo action failed; the host needs attention
     └── LabError                  the lab fleet could not be built or torn down

Front ends (invoke tasks, the pytest plugin) print ``str(error)`` and exit
non-zero; they never show a traceback for a ``DeployError``.
"""

from __future__ import annotations

import traceback


class DeployError(Exception):
    """Base of every error deploykit raises on purpose.

    ``host`` and ``task`` say where the error happened, when known; they are
    prefixed to the message so that one line tells the whole story.
    """

    def __init__(self, message: str, *, host: str | None = None, task: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.task = task

    def __str__(self) -> str:
        where = []
        if self.host:
            where.append(f"host {self.host}")
        if self.task:
            where.append(f"task {self.task}")
        prefix = f"[{', '.join(where)}] " if where else ""
        return f"{prefix}{self.message}"


class ConfigError(DeployError, ValueError):
    """Configuration is missing, unknown or malformed: also a bad argument to a task
    (a ValueError too, so plain-Python callers may catch either)."""


class InventoryError(DeployError):
    """An inventory file or selector is wrong.

    ``source`` is the file (or ``<dict>``), ``line`` the 1-based line where YAML
    gives it, and ``field`` the dotted path of the offending key.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.field = field

    def __str__(self) -> str:
        where = self.source or "inventory"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f" ({self.field})"
        return f"{where}: {self.message}"


class ConnectError(DeployError):
    """A host could not be reached, or the SSH session failed."""


class HostKeyError(ConnectError):
    """The host's key is unknown or differs from the one in known_hosts."""


class AuthenticationError(ConnectError):
    """The host refused our key or password."""


class TaskError(DeployError):
    """A task failed on a host."""


class RemoteCommandError(TaskError):
    """A remote command exited non-zero; carries its exit code and output tail."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        task: str | None = None,
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, host=host, task=task)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class LockHeldError(DeployError):
    """Another run holds the deploy lock on a host."""


class RollbackError(DeployError):
    """An undo action failed; the report says what state the host is in."""


class LabError(DeployError):
    """The lab fleet could not be built, inspected or torn down."""


def unexpected(exc: BaseException) -> tuple[str, str]:
    """``(message, traceback)`` for an exception deploykit did not raise on purpose
    (a KeyError in a task, a psycopg, redis, paramiko or JSON error).

    The message is one line naming the exception, followed by the traceback, as
    Ansible's MODULE FAILURE shows it: enough to report the bug, while the run goes on
    to mark the host failed and undo what it changed.
    """
    trace = "".join(traceback.format_exception(exc)).rstrip("\n")
    text = str(exc) if not isinstance(exc, KeyError) else repr(exc.args[0]) if exc.args else ""
    head = f"unexpected error {type(exc).__name__}" + (f": {text}" if text else "")
    return f"{head}\n{trace}", trace
