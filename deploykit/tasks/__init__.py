"""deploykit's tasks, one module per domain.

Each module's functions build a :class:`deploykit.task.Task`; run it with
``task.run(connection)`` or hand a list of them to :class:`deploykit.Runner`.

* :mod:`~deploykit.tasks.files` — directory, file, template, copy, line_in_file,
  symlink, absent
* :mod:`~deploykit.tasks.system` — command (with guards), user, group, package check
* :mod:`~deploykit.tasks.postgres` — database, role, extension, privilege, backup,
  verify_backup, latest_backup, restore (with swap), undo_restore,
  snapshot_counts, compare_counts, query_check; migrate and rollback
* :mod:`~deploykit.tasks.migrations` — SQL migration directories, alembic and
  generic command adapters
* :mod:`~deploykit.tasks.sqlite` — backup (online API), integrity_check, restore
* :mod:`~deploykit.tasks.redis` — key, hash, invalidate (SCAN + UNLINK), check,
  ping, wait_ready
* :mod:`~deploykit.tasks.flags` — feature flags: flag, kill, list_flags
* :mod:`~deploykit.tasks.nginx` — switch (blue/green), weights (canary), upstream,
  site, drain/undrain, active_color
* :mod:`~deploykit.tasks.http` — wait_for, expect_version, measure and their
  ``*_task`` steps
* :mod:`~deploykit.tasks.releases` — Capistrano-style releases, switch, rollback
* :mod:`~deploykit.tasks.services` — supervisor (and systemd) programs
* :mod:`~deploykit.tasks.checks` — pre-flight checks (CI status, git, resources,
  ports, secrets, backups, reachability)
* :mod:`~deploykit.tasks.notify` — Slack and JSON webhooks that never block a deploy
"""
