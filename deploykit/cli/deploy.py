"""The deploy command set as invoke tasks: deploy, rollback, status, history, backup,
restore, verify, lock, unlock, config (each also takes ``--host``, ``--group``,
``--environment`` and ``--inventory``, see :mod:`deploykit.cli.select`)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import yaml
from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import Task as InvokeTask
from invoke.tasks import task

from deploykit import retry
from deploykit.cli.errors import reports_errors
from deploykit.cli.output import (
    Output,
    exit_for,
    show_history,
    show_status,
    show_summary,
    write_json,
)
from deploykit.cli.select import SELECT, project_of, selects
from deploykit.config import describe_keys, effective_config, load_config
from deploykit.errors import ConfigError, ConnectError, TaskError
from deploykit.pipeline.deploy import deploy
from deploykit.pipeline.locks import release_locks, take_lock
from deploykit.pipeline.project import CONFIG_ENV, Project, config_path
from deploykit.pipeline.restore import backup_now, restore_backup
from deploykit.pipeline.rollback import rollback
from deploykit.pipeline.run import DeployOptions
from deploykit.pipeline.status import (
    fleet_status,
    history_records,
    verify_fleet,
    verify_suite,
)

__all__ = ["TASKS", "add_deploy_tasks", "deploy_collection"]


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question}: confirmation needed and stdin is not a terminal; "
                          f"pass --yes")
    answer = input(f"{question}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise ConfigError("cancelled: nothing was changed")


@task(name="deploy", iterable=["skip_check"], help={
    **SELECT,
    "version": "the version to deploy (default: version from deploykit.yml)",
    "strategy": "bluegreen, rolling or canary (default: strategy from deploykit.yml)",
    "check": "show what would change, pending migrations included; change nothing",
    "yes": "do not ask for confirmation",
    "json": "also write the run report (JSON) to this path",
    "skip_check": "skip this pre-flight check (repeatable); recorded in the report",
    "break_lock": "break a STALE lock (older than lock_ttl_minutes, holder not running "
                  "here) first; recorded",
    "lock_wait": "wait this long for a held lock (90s, 5m, 1h) instead of failing",
    "retry_failed": "re-run the last deploy on the hosts that failed or were unreachable "
                    "(from its run report in .deploykit/runs/)"})
@reports_errors
def deploy_task(c: Context, host: str | None = None, group: str | None = None,
                version: str | None = None, strategy: str | None = None, check: bool = False,
                yes: bool = False, json: str | None = None, skip_check: list[str] | None = None,
                break_lock: bool = False, lock_wait: str | None = None,
                retry_failed: bool = False, environment: str | None = None,
                inventory: str | None = None) -> None:
    """Deploy a version: pre-flight, lock, backup, the strategy, journal, notify."""
    project = project_of(c, host, group, environment, inventory)
    wait = retry.parse_duration(lock_wait)
    if retry_failed:
        if host or group:
            raise ConfigError("--retry-failed picks the hosts itself: drop --host/--group")
        project, version = _retry_project(c, project, version)
    wanted = version or project.config.version
    if not wanted:
        raise ConfigError(f"no version to deploy: pass --version or set version in "
                          f"{project.config.path.name}")
    if not check:
        _confirm(f"deploy {project.app} {wanted} to "
                 f"{', '.join(h.name for h in project.web)}", yes)
    out = Output()
    summary = deploy(project, DeployOptions(version=version, strategy=strategy, check=check,
                                            skip_checks=skip_check or (),
                                            break_lock=break_lock, json_path=json,
                                            lock_wait=wait), out)
    show_summary(out, summary)
    exit_for(summary)


def _retry_project(c: Context, project: Project, version: str | None
                   ) -> tuple[Project, str | None]:
    """``--retry-failed``: the project narrowed to the last deploy's failed hosts, and
    that deploy's version (unless ``version`` is given)."""
    plan = retry.retry_plan(project.config.runs, [h.name for h in project.web],
                            project.db.name if project.db else None)
    for name, why in plan.reasons.items():
        print(f"retry of deploy {plan.deploy_id}: {name} {why}")
    narrowed = project_of(c, ",".join(plan.hosts), None, project.environment,
                          str(project.config.inventory))
    return narrowed, version or plan.version


@task(name="rollback", help={
    **SELECT,
    "to": "the release to go back to (default: what served before the live one; only a "
          "release that passed verification)",
    "app": "roll the app back (default; --no-app to leave it)",
    "db": "also restore the database from the last deploy's pre-deploy backup (swap; the "
          "current one is kept)",
    "migrations": "also roll back this many migrations (their down files)",
    "yes": "do not ask for confirmation",
    "json": "also write the run report (JSON) to this path"})
@reports_errors
@selects
def rollback_task(c: Context, project: Project, to: str | None = None, app: bool = True,
                  db: bool = False, migrations: int = 0, yes: bool = False,
                  json: str | None = None) -> None:
    """Roll back the app (blue/green), migrations and/or the database."""
    what = ", ".join(x for x in ("app" if app else "", "database" if db else "",
                                 f"{migrations} migration(s)" if migrations else "") if x)
    _confirm(f"roll back {project.app} ({what})", yes)
    out = Output()
    summary = rollback(project, to=to, app=app, db=db, migrations_steps=migrations, out=out,
                       json_path=json)
    show_summary(out, summary)
    exit_for(summary)


@task(name="status", help={**SELECT,
                           "json": "write the status as JSON to this path ('-': stdout)"})
@reports_errors
@selects
def status_task(c: Context, project: Project, json: str | None = None) -> None:
    """Per host: active colour, releases, programs, lock holder, last deploy (a host that
    cannot be reached is named; the others are still shown)."""
    rows = fleet_status(project)
    if json:
        write_json([r.to_data() for r in rows], json)
    else:
        show_status(Output(secrets=project.known_secrets()), rows)
    down = [f"{r.name} ({r.error})" for r in rows if r.error and r.error.startswith("unreach")]
    if down:
        raise ConnectError("cannot reach " + "; ".join(down) + " (the other hosts are shown "
                           "above)")


@task(name="history", help={**SELECT,
                            "limit": "how many deploys/rollbacks to show (default 20)",
                            "json": "write the history as JSON to this path ('-': stdout)"})
@reports_errors
@selects
def history_task(c: Context, project: Project, limit: int = 20, json: str | None = None) -> None:
    """Deploys, rollbacks and lock events, from every host's journal, oldest first."""
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    rows = history_records(project, limit)
    if json:
        write_json(rows, json)
        return
    show_history(Output(secrets=project.known_secrets()), rows)


@task(name="backup", help=SELECT)
@reports_errors
@selects
def backup_task(c: Context, project: Project) -> None:
    """Back the app's database up now (verified, with a checksum sidecar)."""
    backup_now(project, Output(secrets=project.known_secrets()))


@task(name="restore", help={**SELECT,
                            "backup": "the dump on the db host (default: the newest backup)",
                            "yes": "do not ask for confirmation"})
@reports_errors
@selects
def restore_task(c: Context, project: Project, backup: str | None = None,
                 yes: bool = False) -> None:
    """Restore the app's database from a backup with swap (the current one is kept)."""
    _confirm(f"replace database {project.database} by "
             f"{backup or 'its newest backup'} (the current one is kept)", yes)
    out = Output(secrets=project.known_secrets())
    summary = restore_backup(project, out, backup)
    show_summary(out, summary)
    exit_for(summary)


@task(name="verify", help={
    **SELECT,
    "suite": "run this testinfra suite (a directory or file) on the hosts instead: a table "
             "per host, JUnit XML and JSON in the runs directory",
    "marker": "with --suite: only the tests this pytest -m expression selects "
              "(pre_switch, post_switch)"})
@reports_errors
@selects
def verify_task(c: Context, project: Project, suite: str | None = None,
                marker: str | None = None) -> None:
    """Health and version of every web host through nginx, or a testinfra suite (--suite)."""
    out = Output(secrets=project.known_secrets())
    if suite is not None:
        result = verify_suite(project, suite, marker=marker)
        out.table(result.table())
        out.line(f"JUnit XML: {result.junit_path}; results: {result.json_path}")
        if not result.ok:
            raise TaskError("verification failed (see above)")
        return
    if marker is not None:
        raise ConfigError("--marker selects tests of a --suite")
    if not verify_fleet(project, out):
        raise TaskError("verification failed (see above)")


@task(name="lock", help=SELECT)
@reports_errors
@selects
def lock_task(c: Context, project: Project) -> None:
    """Hold the deploy lock on every host (deploys are refused until invoke unlock)."""
    take_lock(project, Output(secrets=project.known_secrets()))


@task(name="unlock", help={**SELECT,
                           "force": "break any lock whose holder is not running here "
                                    "(recorded)"})
@reports_errors
@selects
def unlock_task(c: Context, project: Project, force: bool = False) -> None:
    """Remove your invoke lock (or your crashed deploy's lock); --force: any lock whose
    holder is not a live process of this controller."""
    release_locks(project, Output(secrets=project.known_secrets()), force=force)


@task(name="config", help={
    **SELECT,
    "show": "print the effective configuration (defaults filled in, references resolved, "
            "secrets redacted) and the inventory's hosts; non-zero when a secret is missing"})
@reports_errors
def config_task(c: Context, show: bool = False, host: str | None = None,
                group: str | None = None, environment: str | None = None,
                inventory: str | None = None) -> None:
    """Every deploykit.yml key with its default and meaning, then this project's values."""
    if show:
        project = project_of(c, host, group, environment, inventory)
        data, problems = effective_config(project.config, project.db,
                                          list(project.inventory.hosts.values()))
        print(f"# {project.config.path} (effective; secrets redacted)")
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
        if problems:
            raise ConfigError(f"{len(problems)} secret(s) cannot be resolved: "
                              + "; ".join(problems))
        return
    print(f"deploykit.yml keys (file: {config_path(c)}; ${CONFIG_ENV} names another):\n")
    print(describe_keys())
    path = config_path(c)
    if not path.exists():
        print(f"\n{path}: not found")
        return
    cfg = load_config(path)
    print(f"\n{cfg.path}:")
    for key, value in dataclasses.asdict(cfg).items():
        if key != "path":
            print(f"  {key}: {value}")


TASKS: tuple[InvokeTask[Any], ...] = (
    deploy_task, rollback_task, status_task, history_task, backup_task, restore_task,
    verify_task, lock_task, unlock_task, config_task)
"""Every deploy task, for :func:`add_deploy_tasks`."""


def add_deploy_tasks(ns: Collection) -> Collection:
    """Add every deploy task to ``ns`` at its top level (``invoke deploy``, ...)."""
    for t in TASKS:
        ns.add_task(t)
    return ns


deploy_collection = Collection(*TASKS)
"""The tasks as a collection (``ns.add_collection(deploy_collection, "app")`` namespaces
them: ``invoke app.deploy``)."""
