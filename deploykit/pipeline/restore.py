"""``invoke backup`` / ``restore``: the app database, backed up or restored with swap."""

from __future__ import annotations

import logging

from deploykit import journal
from deploykit.errors import ConfigError, TaskError
from deploykit.pipeline.events import Display
from deploykit.pipeline.fleet import connected
from deploykit.pipeline.project import Project
from deploykit.pipeline.run import JOURNAL_RESULT, DeploySummary, Run, data_of
from deploykit.tasks import postgres

log = logging.getLogger("deploykit.pipeline.restore")

# == backup, restore, verify ==================================================================


def backup_now(project: Project, out: Display) -> str:
    """``invoke backup``: a verified backup of the app's database now."""
    if project.db is None or project.database is None:
        raise ConfigError(f"no database: set db and database.name in "
                          f"{project.config.path.name}")
    backup_id = f"manual-{journal.new_deploy_id(project.config.root)}"
    cfg = project.config
    task = postgres.backup(project.database, app=cfg.app, deploy_id=backup_id,
                           keep_last=cfg.database.backup_keep_last,
                           keep_days=cfg.database.backup_keep_days, compress=1,
                           name=f"backup {project.database}")
    with connected([project.db], project.known_secrets()) as conns:
        result = task.run(conns[project.db.name])
    if result.failed:
        raise TaskError(result.message, host=project.db.name, task=task.name)
    size = result.data.get("size")
    out.line(f"backup of {project.database} on {project.db.name}: {task.path}"
             + (f" ({size} bytes)" if size else "") + ", checksum verified")
    return task.path


def restore_backup(project: Project, out: Display, source: str | None = None) -> DeploySummary:
    """``invoke restore``: restore a backup (default: the newest) with swap, under the lock."""
    if project.db is None or project.database is None:
        raise ConfigError(f"no database: set db and database.name in "
                          f"{project.config.path.name}")
    cfg, db = project.config, project.db
    run = Run(project, out, "restore", secrets=project.known_secrets())
    with journal.RunLog(run.files.log, secrets=run.secrets), run.signals, \
            connected(project.hosts, run.secrets) as conns:
        summary = DeploySummary(run.deploy_id, "restore", "failed", None, "", hosts=[db.name])
        with journal.fleet_lock([conns[h.name] for h in project.hosts], cfg.app,
                                run.deploy_id, ttl=cfg.lock_ttl, kind="rollback",
                                strategy="restore", **run.lock_options()) as lock:
            try:
                if source is None:  # the newest backup, chosen inside the lock
                    latest = postgres.latest_backup(project.database, app=cfg.app).run(
                        conns[db.name])
                    if latest.failed:
                        raise ConfigError(latest.message)
                    source = str(latest.data["path"])
                part = run.run_phase([postgres.restore(project.database, source,
                                                       name="restore database")],
                                     f"restore {project.database} from {source}", [db], conns)
                if part.failed:
                    summary.message = f"restore failed: {project.database} is untouched"
                else:
                    summary.result = "succeeded"
                    summary.message = (f"{project.database} restored from {source}; the "
                                       f"previous database is kept as "
                                       f"{data_of(part, 'previous')}")
            finally:
                lock.end(JOURNAL_RESULT[summary.result], steps=run.report,
                         message=summary.message)
        summary.problems += [f"{h}: {why}" for h, why in sorted(lock.release_errors.items())]
    return run.finish(summary)


