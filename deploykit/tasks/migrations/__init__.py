"""Database migrations: deploykit's own SQL files, and the app's own tool on the host.

One module per tool:

* :mod:`.sqlfiles` / :mod:`.sql` — deploykit's SQL migrations (``NNNN_name.up.sql``)
  run from the controller through an SSH port forward: :func:`migrate`, :func:`rollback`;
* :mod:`.alembic` — :func:`alembic_migrate`, :func:`alembic_downgrade`;
* :mod:`.command` — :func:`command_migrate`, any tool with a status command;
* :mod:`.tools` — the app contract's ``migrate:`` section as one interface for every tool
  (``sql | alembic | django | flask | command``): list pending, apply with the release's
  environment, roll back N with the release that applied them, report what ran
  (:func:`tool_for`);
* :mod:`.policy` — expand/contract: may older code run over the applied migrations?
"""

from __future__ import annotations

from deploykit.tasks.migrations import policy
from deploykit.tasks.migrations.alembic import (
    AlembicTask,
    alembic_downgrade,
    alembic_migrate,
    parse_alembic_revisions,
)
from deploykit.tasks.migrations.command import CommandMigrateTask, command_migrate
from deploykit.tasks.migrations.sql import MigrateTask, RollbackTask, migrate, rollback
from deploykit.tasks.migrations.sqlfiles import (
    AppliedMigration,
    Migration,
    load_migrations,
    pending_migrations,
    rollback_targets,
    sql_error_location,
)
from deploykit.tasks.migrations.tools import (
    AlembicTool,
    CommandTool,
    DjangoTool,
    FlaskTool,
    MigrationState,
    MigrationTool,
    ReleaseEnv,
    SqlTool,
    tool_for,
)

__all__ = [
    "AlembicTask",
    "AlembicTool",
    "AppliedMigration",
    "CommandMigrateTask",
    "CommandTool",
    "DjangoTool",
    "FlaskTool",
    "MigrateTask",
    "Migration",
    "MigrationState",
    "MigrationTool",
    "ReleaseEnv",
    "RollbackTask",
    "SqlTool",
    "alembic_downgrade",
    "alembic_migrate",
    "command_migrate",
    "load_migrations",
    "migrate",
    "parse_alembic_revisions",
    "pending_migrations",
    "policy",
    "rollback",
    "rollback_targets",
    "sql_error_location",
    "tool_for",
]
