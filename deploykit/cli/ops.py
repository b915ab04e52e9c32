"""invoke tasks for day-2 operations: ``exec``, ``logs``, ``maintenance``, ``details``, ``prune``.

Add them to a project's tasks.py next to the deploy tasks (they read the same
``deploykit.yml``, see :func:`deploykit.pipeline.project.config_path`)::

    from deploykit.cli.ops import add_ops_tasks
    add_ops_tasks(ns)

then::

    invoke exec "uptime" --group web [--host web-1] [--sudo] [--check]
    invoke logs --group web --service nginx --grep ' 5[0-9][0-9] ' --since 10m [--follow]
    invoke maintenance on --allow 10.0.0.7,10.1.0.0/16 [--check]; invoke maintenance off
    invoke details [--json -]
    invoke prune [--keep 3] [--yes]

Any error is one ``error: ...`` line and a non-zero exit code (no traceback).
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import Task as InvokeTask
from invoke.tasks import task
from rich.table import Table

from deploykit import journal
from deploykit.cli.errors import reports_errors
from deploykit.cli.output import Output
from deploykit.cli.select import SELECT, project_of
from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.inventory import Host
from deploykit.ops import details as host_details
from deploykit.ops import exec as fleet_exec
from deploykit.ops import logs as fleet_logs
from deploykit.ops import prune as fleet_prune
from deploykit.ops.hosts import select_hosts
from deploykit.ops.maintenance import set_maintenance
from deploykit.pipeline.fleet import connected
from deploykit.pipeline.project import Project
from deploykit.result import Status
from deploykit.tasks.maintenance import maintenance as maintenance_task

__all__ = ["OPS_TASKS", "add_ops_tasks", "ops_collection"]

_SELECT = {**SELECT, "host": "only these hosts (a selector: web-1 or web-1,web-2)",
           "group": "only this group (e.g. web)"}


_project = project_of


def _op_id(project: Project, kind: str) -> str:
    return f"{journal.new_deploy_id(project.config.root)}-{kind}"


# -- exec -------------------------------------------------------------------------------------


@task(name="exec", help={
    **_SELECT, "command": "the shell command to run on each host",
    "sudo": "run it through sudo -n (when the login user is not root)",
    "check": "print what would run where; run nothing",
    "timeout": "seconds the command may take on a host (default 600)",
    "forks": "at most this many hosts at once (default 10)"})
@reports_errors
def exec_task(c: Context, command: str, host: str | None = None, group: str | None = None,
              environment: str | None = None, inventory: str | None = None,
              sudo: bool = False, check: bool = False, timeout: float = 600.0,
              forks: int = 10) -> None:
    """Run a shell command on many hosts in parallel; non-zero exit if any host failed."""
    project = _project(c, None, None, environment, inventory)
    hosts = select_hosts(project.inventory, project.hosts, host=host, group=group)
    out = Output(secrets=project.known_secrets())
    if check:
        for line in fleet_exec.describe_check(hosts, command, sudo=sudo):
            out.line(line)
        return
    printing = threading.Lock()
    width = max(len(h.name) for h in hosts)

    def show(r: fleet_exec.ExecResult) -> None:
        with printing:
            for text in r.stdout.splitlines():
                out.line(f"{r.host:<{width}} | {text}")
            for text in r.stderr.splitlines():
                out.line(f"{r.host:<{width}} ! {text}")
            if r.status == "unreachable":
                out.line(f"{r.host:<{width}} ! unreachable: {r.message}", style="bold red")

    results = fleet_exec.run_everywhere(hosts, command, sudo=sudo, timeout=timeout,
                                        forks=forks, secrets=out.secrets, on_result=show)
    show_exec_summary(out, results)
    problem = fleet_exec.failures(results)
    if problem:
        raise TaskError(f"exec: {problem}")


def show_exec_summary(out: Output, results: Sequence[fleet_exec.ExecResult]) -> None:
    """The table of exit codes and durations."""
    table = Table(title="exec", title_justify="left")
    for column in ("host", "result", "exit code", "took", "note"):
        table.add_column(column)
    for r in results:
        style = {"ok": "green", "failed": "bold red", "unreachable": "bold red"}[r.status]
        table.add_row(r.host, f"[{style}]{r.status}[/]",
                      "-" if r.exit_code is None else str(r.exit_code),
                      f"{r.duration:.2f} s", r.message if r.status != "ok" else "")
    out.table(table)


# -- logs -------------------------------------------------------------------------------------


def _log_hosts(project: Project, service: str, host: str | None,
               group: str | None) -> list[Host]:
    default = [project.db] if service in ("postgres", "redis") and project.db else project.web
    return select_hosts(project.inventory, default, host=host, group=group)


@task(name="logs", help={
    **_SELECT, "service": f"whose logs: {', '.join(fleet_logs.SERVICES)} (default app)",
    "grep": "only lines matching this extended regular expression (grep -E, on the hosts)",
    "since": "only lines newer than this (30s, 10m, 2h, 1d or an ISO 8601 time)",
    "lines": "at most this many lines, the newest (default 100; with --since: all)",
    "follow": "then print new lines as they come, until Ctrl-C",
    "sudo": "read the files through sudo -n"})
@reports_errors
def logs_task(c: Context, host: str | None = None, group: str | None = None,
              service: str = "app", grep: str | None = None, since: str | None = None,
              lines: int = 0, follow: bool = False, sudo: bool = False,
        environment: str | None = None, inventory: str | None = None) -> None:
    """Log lines of many hosts, merged in time order, prefixed by host; or followed."""
    project = _project(c, None, None, environment, inventory)
    seconds = fleet_logs.parse_since(since) if since else None
    if lines < 0:
        raise ConfigError(f"--lines must be at least 1, not {lines}")
    query = fleet_logs.LogQuery(project.app, service, grep=grep, since=seconds,
                                lines=lines or (None if since else 100))
    hosts = _log_hosts(project, service, host, group)
    out = Output(secrets=project.known_secrets())
    width = max(len(h.name) for h in hosts)
    with connected(hosts, out.secrets) as conns:
        for line in fleet_logs.read(conns, query, sudo=sudo or None):
            out.line(f"{line.host:<{width}} {line.source} | {line.text}")
        if follow:
            follow_logs(out, conns, query, width, sudo=sudo or None)


def follow_logs(out: Output, conns: dict[str, Connection], query: fleet_logs.LogQuery,
                width: int, *, sudo: bool | None = None) -> None:
    """Print new lines of every host until SIGINT or SIGTERM; then stop every remote
    process and return (a clean end, exit code 0)."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    follower = fleet_logs.Follower(conns, query, sudo=sudo)
    try:
        follower.start()
        late = follower.wait_started()
        if late:
            out.line(f"warning: following has not started on {', '.join(late)} yet",
                     style="yellow")
        out.line(f"-- following {query.service} logs on {', '.join(conns)} (Ctrl-C stops)",
                 style="dim")
        while not stop.is_set():
            try:
                line = follower.lines.get(timeout=0.2)
            except queue.Empty:
                while not follower.notes.empty():
                    out.line(f"-- {follower.notes.get()}", style="yellow")
                continue
            out.line(f"{line.host:<{width}} {line.source} | {line.text}")
    finally:
        problems = follower.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for p in problems:
        out.line(f"warning: {p}", style="yellow")
    sys.stderr.write(f"-- stopped following; remote processes ended on "
                     f"{', '.join(conns)}\n")


# -- maintenance ------------------------------------------------------------------------------


@task(name="maintenance", help={
    **_SELECT, "state": "on or off",
    "allow": "comma-separated client addresses or networks that still reach the app",
    "retry_after": "the Retry-After header, in seconds (default 300)",
    "message": "the sentence on the maintenance page",
    "check": "show what would change; change nothing"})
@reports_errors
def maintenance_cmd(c: Context, state: str, host: str | None = None, group: str | None = None,
                    allow: str | None = None, retry_after: int = 300,
                    message: str | None = None, check: bool = False,
        environment: str | None = None, inventory: str | None = None) -> None:
    """Maintenance mode on the web hosts: 503 with a page and Retry-After; health checks
    and allowed addresses pass. Recorded in the history."""
    if state not in ("on", "off"):
        raise ConfigError(f"maintenance: say on or off, not {state!r}")
    if state == "off" and allow:
        raise ConfigError("maintenance off: --allow applies to on only")
    project = _project(c, host, group, environment, inventory)
    job = maintenance_task(project.app, on=state == "on",
                           allow=[a for a in (allow or "").split(",") if a.strip()],
                           paths=[project.config.health_path], retry_after=retry_after,
                           message=message)
    out = Output(secrets=project.known_secrets())
    op_id = _op_id(project, "maintenance")
    with connected(project.web, out.secrets) as conns:
        if check:
            results = set_maintenance(conns, job, op_id=op_id, check=True)
        else:  # under the deploy lock: never in the middle of a deploy's switch
            with journal.fleet_lock(list(conns.values()), project.app, op_id,
                                    ttl=project.config.lock_ttl, kind="maintenance",
                                    record=False):
                results = set_maintenance(conns, job, op_id=op_id)
    for r in results:
        note = {Status.OK: f"already {state}", Status.CHANGED:
                f"would turn {state}" if check else f"maintenance {state}"}.get(r.status, "")
        out.line(f"   {r.host:<8} {r.status.value:<8} {note or r.message}",
                 style="bold red" if r.failed else None)
        if check and r.diff:
            for text in r.diff.splitlines():
                out.line(f"      {text}")
    failed = [f"{r.host}: {r.message}" for r in results if r.failed]
    if failed:
        raise TaskError("maintenance " + state + " failed: " + "; ".join(failed))


# -- details ----------------------------------------------------------------------------------


@task(name="details", help={**_SELECT,
                            "json": "write the details as JSON to this path ('-': stdout)"})
@reports_errors
def details_task(c: Context, host: str | None = None, group: str | None = None,
                 json: str | None = None,
        environment: str | None = None, inventory: str | None = None) -> None:
    """Per host: releases and their state, colour, services, disk free, last backup, lock."""
    project = _project(c, None, None, environment, inventory)
    hosts = select_hosts(project.inventory, project.hosts, host=host, group=group)
    roles = {h.name: "web" if h in project.web else "db" if h == project.db else "other"
             for h in hosts}
    cfg = project.config
    with connected(hosts, project.known_secrets()) as conns:
        found = host_details.gather(conns, roles, app=cfg.app, database=project.database,
                                    colors=list(cfg.ports), lock_ttl=cfg.lock_ttl)
    if json:
        import json as _json

        text = _json.dumps([d.to_data() for d in found], indent=2, default=str)
        if json == "-":
            print(text)
        else:
            with open(json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return
    out = Output(secrets=project.known_secrets())
    for d in found:
        out.title(f"{d.name} ({d.address}, {d.role})")
        for text in host_details.describe(d):
            out.line(f"   {text}")


# -- prune ------------------------------------------------------------------------------------


@task(name="prune", help={
    "keep": "good releases to keep per web host, at least 1 (default: keep_releases of "
            "deploykit.yml)",
    "yes": "remove what is listed (without it, nothing is removed)"})
@reports_errors
def prune_task(c: Context, keep: int = 0, yes: bool = False,
        environment: str | None = None, inventory: str | None = None) -> None:
    """List old releases, old databases and backups beyond retention; --yes removes them."""
    project = _project(c, None, None, environment, inventory)
    cfg = project.config
    settings = fleet_prune.PruneSettings(
        cfg.app, keep=keep or cfg.keep_releases,
        database=project.database, backup_keep_last=cfg.database.backup_keep_last,
        backup_keep_days=cfg.database.backup_keep_days,
        old_database_keep_days=cfg.database.old_database_keep_days, lock_ttl=cfg.lock_ttl)
    out = Output(secrets=project.known_secrets())
    web = [h.name for h in project.web]
    with connected(project.hosts, out.secrets) as conns:
        plan = fleet_prune.find(conns, web, project.db.name if project.db else None, settings)
        if plan.kept:
            out.line("kept, and why:")
            for item in plan.kept:
                out.line(f"   {item.host:<8} keep {item.kind:<9} {item.name}  ({item.detail})")
        if not plan.items:
            out.line(f"nothing to prune (keeping {settings.keep} good releases per web host)")
            return
        out.line(f"to remove (keeping {settings.keep} good releases per web host, the "
                 f"current one and the rollback target):")
        for item in plan.items:
            out.line(f"   {item.host:<8} {item.kind:<9} {item.name}  ({item.detail})")
        if not yes:
            out.line("nothing removed: run again with --yes to remove these", style="bold")
            return
        outcome = fleet_prune.remove(conns, plan, settings, op_id=_op_id(project, "prune"))
    problems = []
    for name, (removed, errors) in outcome.items():
        out.line(f"   {name:<8} removed {', '.join(removed) or 'nothing'}")
        problems += [f"{name}: {e}" for e in errors]
    if problems:
        raise TaskError("prune: " + "; ".join(problems))


OPS_TASKS: tuple[InvokeTask[Any], ...] = (exec_task, logs_task, maintenance_cmd, details_task,
                                          prune_task)
"""Every day-2 task, for :func:`add_ops_tasks`."""


def add_ops_tasks(ns: Collection) -> Collection:
    """Add the day-2 tasks to ``ns`` at its top level (``invoke exec``, ``invoke logs``...)."""
    for t in OPS_TASKS:
        ns.add_task(t)
    return ns


ops_collection = Collection(*OPS_TASKS)
"""The tasks as a collection (``ns.add_collection(ops_collection, "ops")``)."""
