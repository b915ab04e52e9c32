"""PostgreSQL tasks: server state, backups, restore with swap, and data checks.

A package of small modules, each with one job; every public name is re-exported here::

    session    PgTask, Session, Scope: one psycopg session per database per run
    access     how pg_dump/pg_restore reach the server: socket, TCP or docker exec
    scram      SCRAM-SHA-256 verifiers computed on the controller
    objects    database, extension
    roles      role, privilege
    app_role   a least-privilege role and database for an app
    checks     snapshot_counts, compare_counts, query_check
    dumps      backup paths, dump verification, client programs on the host
    retention  which backups to keep (deploy cleanup and prune share it)
    backup     backup, verify_backup, latest_backup
    swap       swapping databases by name
    restore    restore, undo_restore

Each function builds a task (a plain value) that follows :mod:`deploykit.task`::

    from deploykit.tasks import postgres
    postgres.role("app", password=Secret(pw)).run(conn)
    postgres.database("app", owner="app").run(conn)
    postgres.backup("app", app="shop", deploy_id=run_id, keep_last=5).run(conn)
    postgres.restore("app", postgres.backup_path("shop", "app", run_id)).run(conn)

**State tasks** (:func:`database`, :func:`role`, :func:`extension`, :func:`privilege`)
talk SQL with psycopg 3 through :func:`deploykit.pg.connect`: by default over an
SSH local port forward on the host's connection (the database port never needs
to be open to the controller), directly when the host sets ``postgres_direct``.
Their probe is SQL, not shell: ``probe_script`` is ``:``, and the facts are
read in :meth:`Task.plan`, which therefore works whether the runner batched the
(empty) shell probe or not. Every SQL statement is appended to
:attr:`Connection.log` as ``sql <database>: <statement>``, marked as a read or a
write, secrets shown as ``********``: the same log that proves that a no-op run
sends no write command proves it for SQL.

**Backups** (:func:`backup`, :func:`latest_backup`, :func:`verify_backup`) run
``pg_dump``/``pg_restore`` *on the database host*, as the ``postgres`` OS user
over the Unix socket (peer authentication: no password travels) or, with
``os_user=None``, over TCP with the password read from the command's stdin
(never on a command line). A backup is ``/var/backups/<app>/<db>-<deploy_id>.dump``
(custom format, mode 0600) with a ``.sha256`` sidecar in ``sha256sum`` format.

**Restore with swap** (:func:`restore`, :func:`undo_restore`) restores into
``<db>_restore``, verifies it, then swaps names. The guarantees, exactly:

* the dump is checked first (``pg_restore --list``, and its sidecar checksum
  when there is one); a corrupt or truncated dump then fails *during the
  restore into* ``<db>_restore``, which is dropped: ``<db>`` is never touched
  before the swap, and its sessions are not interrupted;
* the swap: ``ALLOW_CONNECTIONS false`` on ``<db>`` and ``<db>_restore``
  (committed, so new sessions are refused), every session on both terminated
  (waiting until they are gone), then **one transaction** renames ``<db>`` to
  ``<db>_old_<UTC timestamp>`` and ``<db>_restore`` to ``<db>``, sets
  ``ALLOW_CONNECTIONS true`` on the new ``<db>`` and records the restore in its
  comment. PostgreSQL 15 allows ``ALTER DATABASE ... RENAME`` in a transaction
  block (not ``CREATE``/``DROP DATABASE``): the two renames commit together or
  not at all: the catalog always has exactly one database named ``<db>``, the
  old or the restored one. New sessions on ``<db>`` are refused meanwhile
  ("not currently accepting connections"); one that slipped in between is
  blocked by the rename's lock and then fails ("just been dropped or
  renamed"): none reaches the wrong database or a half-restored one;
* if the transaction fails, both names are unchanged, ``<db>`` accepts
  connections again and ``<db>_restore`` is dropped; if the controller is cut
  off *between* the first commit and the swap transaction, ``<db>`` may stay
  ``ALLOW_CONNECTIONS false`` (the error says so): running the restore again
  repairs it;
* downtime for clients of ``<db>``: from terminating their sessions to the
  commit (milliseconds to seconds), plus their reconnect; sessions are cut,
  so applications must reconnect;
* the old database is kept as ``<db>_old_<timestamp>`` (not connectable) until
  you drop it; :func:`undo_restore` (also the registered undo action) swaps it
  back the same way, keeping the restored one as ``<db>_undone_<timestamp>``.
  Database-level owner, privileges and ``ALTER DATABASE/ROLE ... SET`` settings
  of ``<db>`` are carried over to the restored copy (``pg_restore`` without
  ``--create`` does not restore them).

**Data checks** (:func:`snapshot_counts`, :func:`compare_counts`,
:func:`query_check`) only read; their findings are in ``Result.data``, so run
reports carry them. A failed check is a ``failed`` result with a message.
"""

from __future__ import annotations

from deploykit.tasks import retention
from deploykit.tasks.counts import CountDifference, count_differences, render_differences

# Migrations live in their own module (SQL directories, alembic and command
# adapters); they are PostgreSQL tasks too, so they answer here as well.
from deploykit.tasks.migrations import (
    alembic_downgrade as alembic_downgrade,
)
from deploykit.tasks.migrations import (
    alembic_migrate as alembic_migrate,
)
from deploykit.tasks.migrations import (
    command_migrate as command_migrate,
)
from deploykit.tasks.migrations import (
    migrate as migrate,
)
from deploykit.tasks.migrations import (
    rollback as rollback,
)
from deploykit.tasks.postgres.access import Access
from deploykit.tasks.postgres.app_role import app_role
from deploykit.tasks.postgres.backup import (
    BackupTask,
    LatestBackupTask,
    VerifyBackupTask,
    backup,
    latest_backup,
    verify_backup,
)
from deploykit.tasks.postgres.checks import (
    CompareCountsTask,
    QueryCheckTask,
    SnapshotCountsTask,
    compare_counts,
    query_check,
    snapshot_counts,
)
from deploykit.tasks.postgres.dumps import (
    BACKUP_ROOT,
    DumpFacts,
    backup_path,
    parse_dump,
    verify_script,
)
from deploykit.tasks.postgres.objects import (
    DatabaseTask,
    ExtensionFacts,
    ExtensionTask,
    database,
    extension,
)
from deploykit.tasks.postgres.restore import (
    RestoreTask,
    UndoRestoreTask,
    restore,
    undo_restore,
)
from deploykit.tasks.postgres.roles import (
    PRIVILEGES,
    PrivilegeTask,
    RoleFacts,
    RoleTask,
    privilege,
    role,
)
from deploykit.tasks.postgres.scram import (
    saslprep,
    scram_matches,
    scram_verifier,
)
from deploykit.tasks.postgres.session import (
    DatabaseFacts,
    PgTask,
)
from deploykit.tasks.postgres.swap import (
    parse_marker,
    split_guc_list,
)

__all__ = [
    "BACKUP_ROOT",
    "PRIVILEGES",
    "Access",
    "BackupTask",
    "CompareCountsTask",
    "CountDifference",
    "DatabaseFacts",
    "DatabaseTask",
    "DumpFacts",
    "ExtensionFacts",
    "ExtensionTask",
    "LatestBackupTask",
    "PgTask",
    "PrivilegeTask",
    "QueryCheckTask",
    "RestoreTask",
    "RoleFacts",
    "RoleTask",
    "SnapshotCountsTask",
    "UndoRestoreTask",
    "VerifyBackupTask",
    "app_role",
    "backup",
    "backup_path",
    "compare_counts",
    "count_differences",
    "database",
    "extension",
    "latest_backup",
    "parse_dump",
    "parse_marker",
    "privilege",
    "query_check",
    "render_differences",
    "restore",
    "retention",
    "role",
    "saslprep",
    "scram_matches",
    "scram_verifier",
    "snapshot_counts",
    "split_guc_list",
    "undo_restore",
    "verify_backup",
    "verify_script",
]
