"""``rollback``: the app to the release before, migrations down, the database back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg

from deploykit import artifacts, journal, pg
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.pipeline.events import Display, LogDisplay
from deploykit.pipeline.fleet import HostView, common_color, fleet_views, versions_from
from deploykit.pipeline.project import Project, ensure_artifact
from deploykit.pipeline.run import (
    JOURNAL_RESULT,
    RESULT_OF,
    DeploySummary,
    Run,
    data_of,
    journal_message,
    temporary_dir,
)
from deploykit.pipeline.strategy import StrategyRun, placeholder_artifact, release_spec
from deploykit.tasks import migrations, postgres

log = logging.getLogger("deploykit.pipeline.rollback")

# == rollback =================================================================================


def _last_backup(project: Project, conn: Connection) -> tuple[str, journal.DeployRecord]:
    """The pre-deploy backup of the newest successful deploy (it must exist)."""
    assert project.database is not None
    records = journal.summarize_history(journal.history(conn, project.app, limit=400))
    deploys = [r for r in records if r.kind == "deploy" and r.result == "succeeded"]
    if not deploys:
        raise ConfigError(f"no successful deploy in the history of {conn.name}: no "
                          f"pre-deploy backup to restore (use invoke restore --backup PATH)")
    last = deploys[-1]
    path = postgres.backup_path(project.app, project.database, last.id)
    result = postgres.verify_backup(path).run(conn)
    if result.failed:
        raise ConfigError(f"the pre-deploy backup of deploy {last.id} ({last.version_from} -> "
                          f"{last.version_to}) cannot be used: {result.message}")
    return path, last


def rollback(project: Project, *, to: str | None = None, app: bool = True, db: bool = False,
             migrations_steps: int = 0, out: Display | None = None,
             json_path: str | None = None) -> DeploySummary:
    """Roll back, under the lock, in this order: the app (blue/green to what served before
    the live release by the hosts' ledgers -- not by install time -- or ``to``, which must
    have passed verification; the database's schema is left as it is), ``migrations_steps``
    migrations (down files of the release left), the database (``db``: the pre-deploy
    backup of the newest successful deploy, restored with swap; the current database is
    kept as ``<db>_old_<time>``)."""
    out = out or LogDisplay()
    cfg = project.config
    if not (app or db or migrations_steps):
        raise ConfigError("nothing to roll back: drop --no-app, or add --db or --migrations N")
    if (db or migrations_steps) and project.database is None:
        raise ConfigError(f"--db and --migrations need database.name and a db host in "
                          f"{cfg.path.name}")
    run = Run(project, out, "rollback")
    refused: ConfigError | None = None
    run.hooks.check()
    names = [h.name for h in project.web]
    with journal.RunLog(run.files.log, secrets=run.secrets), run.signals, run.connect(
            project.hosts, DeploySummary(run.deploy_id, "rollback", "failed", None, "",
                                         hosts=names), json_path) as conns:
        summary = DeploySummary(run.deploy_id, "rollback", "failed", None, "", hosts=names)
        views: dict[str, HostView] = {}
        with journal.fleet_lock([conns[h.name] for h in project.hosts], cfg.app,
                                run.deploy_id, ttl=cfg.lock_ttl, kind="rollback",
                                strategy="bluegreen", **run.lock_options()) as lock:
            run.locked(lock)
            try:
                # Read inside the lock: the target and the backup are chosen from what the
                # fleet serves now, not from before another deploy finished.
                views = fleet_views(conns, project.web, cfg.app)
                live = {v.version for v in views.values()}
                left = next(iter(live)) if len(live) == 1 else None
                driven = StrategyRun.over(
                    "bluegreen", project, conns,
                    release_spec(project, placeholder_artifact(cfg.app), database=False), run,
                    migrate=False) if app else None
                target = driven.rollback_target(to) if driven is not None else None
                backup = _last_backup(project, conns[project.db.name]) \
                    if db and project.db else None
                summary.version = run.version = \
                    target.version if target is not None else left
                summary.previous = common_color(views)
                parts = [f"app {left} -> {target.version}" if target is not None else "",
                         f"the newest {migrations_steps} migration(s)"
                         if migrations_steps else "",
                         f"database from {backup[0]}" if backup else ""]
                out.line(f"rollback {run.deploy_id}: {cfg.app}: "
                         + ", ".join(p for p in parts if p))
                summary.result, summary.message = _rollback_steps(
                    run, conns, driven, left, migrations_steps, backup, summary)
            except KeyboardInterrupt:
                summary.result = "aborted"
                summary.message = "interrupted; run invoke status to see where things are"
            except ConfigError as exc:
                summary.message = f"{exc}; nothing was changed"
                refused = exc
            except DeployError as exc:
                summary.message = str(exc)
            finally:
                run.after_hooks(summary)
                lock.end(JOURNAL_RESULT[summary.result], steps=run.report,
                         message=journal_message(summary, run.notes),
                         version_to=summary.version,
                         version_from=versions_from(project, views) or None)
        run.ended(summary, lock)
        out.line(f"   lock released on {', '.join(lock.hosts)}")
    if refused is not None:
        run.finish(summary, json_path)
        raise refused
    return run.finish(summary, json_path)


def _rollback_steps(run: Run, conns: Mapping[str, Connection], driven: StrategyRun | None,
                    left: str | None, steps: int, backup: tuple[str, Any] | None,
                    summary: DeploySummary) -> tuple[str, str]:
    project, cfg, out = run.project, run.project.config, run.out
    done: list[str] = []
    if driven is not None:
        out.title(f"app: back to {driven.runtime.release_id}")
        outcome = driven.rollback()
        run.report.merge(outcome.report)
        summary.color, summary.phases = outcome.color, outcome.phases
        if not outcome.ok:
            return RESULT_OF[outcome.result], f"app rollback failed: {outcome.message}"
        done.append(outcome.message)
    if steps:
        assert project.db is not None and project.database is not None
        source = _migrations_source(project, conns[project.db.name], steps) or left
        if source is None:
            raise ConfigError("cannot tell whose down files to use: the journal does not say "
                              "which deploy applied the newest migration and the web hosts "
                              "do not serve one version")
        out.title(f"migrations: the newest {steps} down, with the down files of {source}")
        artifact = ensure_artifact(cfg, source, out)
        with temporary_dir() as tmp:
            directory = artifacts.unpack_migrations(artifact, tmp)
            task = migrations.rollback(directory, database=project.database,
                                       steps=steps, deploy_id=run.deploy_id)
            part = run.run_phase([task], f"roll back {steps} migration(s) of {source}",
                                 [project.db], conns)
        if part.failed:
            return "failed", "; ".join([*done, "migration rollback failed (see above)"])
        done.append(f"{steps} migration(s) rolled back with {source}'s down files")
    if backup is not None:
        path, record = backup
        out.title(f"database: restore the backup taken before deploy {record.id}")
        restore = postgres.restore(project.database or "", path, name="restore database")
        assert project.db is not None
        part = run.run_phase([restore], f"restore {project.database} from {path}",
                             [project.db], conns)
        if part.failed:
            return "failed", "; ".join([*done, "database restore failed: "
                                        f"{project.database} is untouched"])
        kept = data_of(part, "previous")
        done.append(f"database {project.database} restored from {path} (the previous one "
                    f"is kept as {kept})")
    run.signals.checkpoint()
    return "succeeded", "; ".join(done)


def _migrations_source(project: Project, conn: Connection, steps: int) -> str | None:
    """The version whose artifact holds the newest ``steps`` applied migrations: the one
    deployed by the deploy that applied the newest of them (its id is on the migration's
    row, its version in the journal); None when the journal does not say."""
    assert project.database is not None
    try:
        with pg.connect(conn, project.database) as session:
            rows = session.execute("SELECT deploy_id FROM schema_migrations ORDER BY version "
                                   "DESC LIMIT %s", [steps]).fetchall()
    except (DeployError, psycopg.Error) as exc:
        log.info("no migration rows to read: %s", exc)
        return None
    versions = {r.id: r.version_to for r in journal.summarize_history(
        journal.history(conn, project.app, limit=400)) if r.kind == "deploy"}
    return versions.get(str(rows[0][0])) if rows else None


