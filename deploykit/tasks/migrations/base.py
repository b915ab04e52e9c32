"""What every migrate tool of the app contract shares: the release it runs in
(:class:`ReleaseEnv`), what it reports (:class:`MigrationState`) and its interface
(:class:`MigrationTool`). The tools are in :mod:`.tools`; the steps of a tool run on the
host in :mod:`.hoststeps`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.secrets import Secret
from deploykit.shell import quote
from deploykit.task import Task

__all__ = ["MigrationState", "MigrationTool", "ReleaseEnv", "check_steps"]


@dataclass(frozen=True)
class ReleaseEnv:
    """One release on the host, as a migration tool runs in it.

    ``path``: the release directory (``/srv/app/releases/v2``); every command runs there.
    ``env``: the release's environment (``DATABASE_URL``, ``DJANGO_SETTINGS_MODULE``...);
    values travel through stdin, secrets are redacted. ``venv``: the release's venv
    (relative to ``path``). ``source``: the release's source on the controller (the
    ``sql`` tool reads its ``migrations/`` there). ``deploy_id``: recorded by ``sql``.
    """

    path: str
    env: Mapping[str, str | Secret] = field(default_factory=dict)
    venv: str = "venv"
    source: Path | None = None
    deploy_id: str | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError(f"release path must be absolute, not {self.path!r}")

    def bin(self, program: str) -> str:
        """``<path>/<venv>/bin/<program>``."""
        return f"{self.path.rstrip('/')}/{self.venv}/bin/{program}"

    def run(self, command: str) -> str:
        """``command`` (shell code) run in the release directory, in a subshell."""
        return f"(cd -- {quote(self.path)} && {command})"


@dataclass(frozen=True)
class MigrationState:
    """What the tool says: applied and pending migrations, each in the tool's own order."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    current: tuple[str, ...] = ()  # alembic: the current revisions ([] at base)


class MigrationTool(ABC):
    """One migration tool of the app contract (see the module docstring)."""

    name: ClassVar[str]
    transactional: bool

    @abstractmethod
    def state(self, conn: Connection, release: ReleaseEnv) -> MigrationState:
        """Applied and pending migrations, by the tool's own read-only query."""

    @abstractmethod
    def migrate(self, release: ReleaseEnv) -> Task:
        """The step applying every pending migration with ``release``'s code and env."""

    @abstractmethod
    def rollback(self, release: ReleaseEnv, steps: int) -> Task:
        """The step rolling back the newest ``steps`` migrations with ``release``'s scripts
        (the release that applied them)."""



def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"migrate rollback: steps must be a positive integer, not {steps!r}")
    return steps


