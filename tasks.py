"""The project's own invoke tasks: the deploy pipeline, the demo, the lab, the tests.

    invoke demo [--keep]         the whole pipeline on the lab, explained, in about 2 minutes
    invoke deploy --version v2   pre-flight, lock, backup, blue/green, journal, notify
    invoke rollback [--db]       back to the previous release (and the pre-deploy data)
    invoke status | history      what runs where; what happened
    invoke backup | restore | verify | lock | unlock | config
    invoke lab.up | lab.status | lab.down
    invoke test [--args ARGS]    the whole test suite (unit + lab)
    invoke flags.list|set|kill   feature flags in Redis

The deploy tasks read deploykit.yml (the sample app on the lab); see README "Deploying".
Hooks (pre_deploy, post_deploy, ...) are executables in hooks/ beside deploykit.yml, or
callables registered here: ``@deploykit.hooks.hook("post_deploy")`` (see deploykit/hooks.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from deploykit.cli import Output, add_tasks, reports_errors
from deploykit.cli.output import show_history, show_preflight, show_status, show_summary
from deploykit.connection import Connection
from deploykit.pipeline import (
    DeployOptions,
    Project,
    connected,
    deploy,
    fleet_status,
    history_records,
    preflight,
)
from deploykit.tasks import http, postgres
from deploykit.testing.labtasks import DEFAULT_INVENTORY, lab_collection, lab_from, status_table

DEMO_STEPS = 7


@task(help={"hosts": "lab host count or 'name:role,...' (default web-1, web-2, db-1)",
            "keep": "leave the lab up afterwards (then try invoke status, invoke history)"})
@reports_errors
def demo(c: Context, hosts: str | None = None, keep: bool = False) -> None:
    """The deploy pipeline on the lab, explained, in about two minutes.

    Pre-flight, v1, blue/green to v2, a broken and a slow release that never reach users,
    status and history; then the lab goes down (unless --keep).
    """
    out = Output()
    started = time.monotonic()
    lab = lab_from(hosts, DEFAULT_INVENTORY)
    out.line("deploykit demo: deploying a small web app (examples/app) blue/green to a lab "
             "of real hosts, with the safety nets a team needs. About two minutes.")
    try:
        _step(out, 1, "The lab", "Each host is a network namespace on this machine with its "
              "own address and sshd; web hosts run nginx + supervisor, db-1 runs PostgreSQL "
              "15 + Redis. deploykit reaches them over SSH only, as it would real servers.")
        lab.up()
        lab.reset()
        out.table(status_table(lab.status()))
        project = Project.load("deploykit.yml")
        _fresh_database(project)

        _step(out, 2, "Pre-flight checks", "Read-only checks before anything changes: disk "
              "and memory on every host, nginx listening, the database reachable, the app's "
              "secrets set and not weak. A failing check stops the deploy and is listed.")
        with connected(project.hosts, project.secrets()) as conns:
            show_preflight(out, preflight(project, conns))

        _step(out, 3, "Deploy v1, the first release", "The artifact (code and its wheels) is "
              "built on this machine, the hosts are locked, the database is created and "
              "migrated, each web host installs v1 and runs it as the 'blue' colour; nginx "
              "sends traffic to blue once blue's health check passes.")
        _deploy(project, out, "v1")

        _step(out, 4, "Blue/green to v2", "v2 adds a column. The database is backed up first "
              "(the file name holds the deploy id), then migrated; v2 starts on 'green' "
              "beside blue, which keeps serving. Once green is healthy, nginx switches to "
              "it, and blue stops after a grace period.")
        _deploy(project, out, "v2")

        _step(out, 5, "A broken release: v3-broken", "v3-broken starts, but its health check "
              "fails. The deploy stops before the switch: no user ever sees it, traffic "
              "stays on v2, and the command exits non-zero.")
        _deploy(project, out, "v3-broken")

        _step(out, 6, "A slow release: v4-slow", "v4-slow is healthy but answers in a second. "
              "Traffic switches to it, the latency check through nginx fails, and every host "
              "is switched back to v2 automatically; v4-slow is marked failed.")
        _deploy(project, out, "v4-slow")

        _step(out, 7, "Where things are", "invoke status reads each host; invoke history "
              "reads the journal every host keeps in /var/lib/deploykit/sampleapp.")
        show_status(out, fleet_status(project))
        show_history(out, history_records(project, 10))
        out.line()
        out.line(f"demo done in {time.monotonic() - started:.0f} s. Where to look next:",
                 style="bold")
        for text in (
                "README.md, section Deploying: every command with an example",
                "deploykit.yml: this project's configuration (invoke config lists every key)",
                ".deploykit/runs/: a JSON report and a log for every deploy above",
                "invoke demo --keep, then invoke status, invoke history, invoke rollback --db",
                "deploykit/strategies/bluegreen.py: the phases; deploykit/pipeline/: the "
                "pipeline (deploy.py, rollback.py, ...); deploykit/cli/: the commands"):
            out.line(f"   {text}")
    finally:
        if not keep:
            lab.down()
            out.line("lab down")


def _step(out: Output, number: int, title: str, text: str) -> None:
    out.line()
    out.line(f"[{number}/{DEMO_STEPS}] {title}", style="bold cyan")
    out.line(f"   {text}", style="dim")


def _deploy(project: Project, out: Output, version: str) -> None:
    """Deploy ``version``; a failure is part of the story, not the end of the demo."""
    summary = deploy(project, DeployOptions(version=version), out)
    show_summary(out, summary)
    for h in project.web:
        response = http.request(f"http://{h.address}{project.config.version_path}")
        try:
            serving = response.json().get("version")
        except ValueError:
            serving = response.describe()
        out.line(f"   users of {h.name} get: GET /version -> {serving}")


def _fresh_database(project: Project) -> None:
    """Drop the app's database left by an earlier demo, so that v1 is a first deploy."""
    if project.db is None or project.database is None:
        return
    drop: Callable[[Connection], object] = postgres.database(
        project.database, state="absent", force=True).run
    with connected([project.db], project.secrets()) as conns:
        drop(conns[project.db.name])


@task(help={"args": "extra pytest arguments, e.g. '-k inventory -x'"})
def test(c: Context, args: str = "") -> None:
    """Run the whole test suite (unit tests and lab tests over real SSH)."""
    result = c.run(f"{sys.executable} -m pytest {args}", warn=True, pty=False)
    code = result.exited if result is not None else 1
    if code:
        raise Exit(code=code)


ns = Collection(demo, test)
add_tasks(ns)
ns.add_collection(lab_collection, "lab")
