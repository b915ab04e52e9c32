"""``deploy``: pre-flight, lock, backup, the strategy, journal, notify; Ctrl-C safe."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from deploykit import journal
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.hooks import HookError
from deploykit.journal import LockLostError
from deploykit.pipeline.events import Display, LogDisplay, PreflightDone
from deploykit.pipeline.fleet import HostView, common_color, fleet_views, versions_from
from deploykit.pipeline.preflight import check_skips, preflight, preflight_checks
from deploykit.pipeline.project import Project, ensure_artifact
from deploykit.pipeline.run import (
    JOURNAL_RESULT,
    RESULT_OF,
    DeployOptions,
    DeploySummary,
    Run,
    backup_before,
    journal_message,
    pending_migrations,
)
from deploykit.pipeline.strategy import StrategyRun, check_runtime, check_strategy, release_spec
from deploykit.runner import Step, step
from deploykit.runtimes.release import ReleaseSpec
from deploykit.strategies.base import ReleaseState, other
from deploykit.task import Task
from deploykit.tasks import http, nginx, notify, releases, services

log = logging.getLogger("deploykit.pipeline.deploy")

def restore_traffic(run: Run, conns: Mapping[str, Connection],
                    before: Mapping[str, HostView]) -> str:
    """After an interrupt: traffic back on the colour that served before (its program
    started, ``current`` back on its release), verified through nginx. Says what it did."""
    project, cfg = run.project, run.project.config
    color = common_color(before)
    if color is None:
        return "no colour served before this deploy: nothing to switch back to"
    first = next(iter(before.values()))
    live = first.live
    steps: list[Task | Step] = [services.service(f"{cfg.app}-{color}", "started",
                                          name=f"start {cfg.app}-{color}")]
    if live is not None and live.good:
        steps.append(releases.switch(cfg.app, live.release_id))
    steps += [nginx.switch(cfg.app, color, colors=cfg.ports, name=f"nginx: traffic to {color}"),
              http.wait_for_task(f"http://{{address}}{cfg.health_path}",
                                 json_expect={"status": "ok"}, retries=10, interval=0.3,
                                 name="verify: health through nginx")]
    idle = f"{cfg.app}-{other(color)}"
    started = {h.name for h in project.web
               if services.status(conns[h.name], idle).state not in ("STOPPED", "ABSENT")}
    steps.append(step(services.service(idle, "stopped", name=f"stop {idle}"),
                      when=lambda v: v["inventory_hostname"] in started))
    part = run.run_phase(steps, f"restore: traffic back to {color}", project.web, conns,
                         undo="none")
    if part.failed:
        return (f"traffic could NOT be put back on {color} everywhere; see the report and "
                f"run `invoke status`")
    version = f" ({live.version})" if live is not None else ""
    return f"traffic is on {color}{version}, as before the deploy"


def deploy(project: Project, options: DeployOptions, out: Display | None = None
           ) -> DeploySummary:
    """Run the whole deploy pipeline (see the module docstring); returns the summary.

    Raises :class:`PreflightError` when a pre-flight check fails (nothing was
    changed), :class:`LockHeldError` when another deploy holds the lock; a
    failed deploy returns a summary with ``ok`` False (the caller exits non-zero).
    """
    out = out or LogDisplay()
    cfg = project.config
    version = options.version or cfg.version
    if not version:
        raise ConfigError(f"no version to deploy: pass --version or set version in "
                          f"{cfg.path.name}")
    strategy = check_strategy(options.strategy or cfg.strategy)
    check_runtime(cfg.runtime)
    project.env()  # resolve every reference before anything happens
    check_skips(preflight_checks(project), options.skip_checks)
    try:
        artifact = ensure_artifact(cfg, version, out)
    except DeployError as exc:  # a failed build is a failed deploy: say so where people look
        notify.stage_failed(project.notifier(), "build",
                            deploy_id=journal.new_deploy_id(cfg.root), app=cfg.app,
                            version=version, hosts=[h.name for h in project.web],
                            message=exc.message)
        raise
    run = Run(project, out, "deploy", check=options.check)
    run.version = version
    run.hooks.check()
    names = [h.name for h in project.web]
    out.line(f"deploy {run.deploy_id}: {cfg.app} {version} to {', '.join(names)}"
             + (f" (database {project.database} on {project.db.name})"
                if project.db is not None and project.database else "")
             + (" -- check mode: nothing will change" if options.check else ""))
    with journal.RunLog(run.files.log, secrets=run.secrets), run.signals, run.connect(
            project.hosts, DeploySummary(run.deploy_id, "deploy", "failed", version, "",
                                         hosts=names), options.json_path) as conns:
        out.title("pre-flight checks")
        pre = preflight(project, conns, skip=options.skip_checks)
        for r in pre.results:
            run.report.add(r)
        run.events.emit(PreflightDone(pre))
        skipped = sorted({r.task for r in pre.skipped})
        if skipped:
            run.notes.append(f"pre-flight checks skipped on request: {', '.join(skipped)}")
        if not pre.ok:
            run.finish(DeploySummary(run.deploy_id, "deploy", "failed", version,
                                     "pre-flight failed: nothing was changed", hosts=names),
                       options.json_path)
            try:
                pre.raise_for_failures()
            except DeployError as exc:
                if not options.check:
                    notify.stage_failed(project.notifier(), "pre-flight",
                                        deploy_id=run.deploy_id, app=cfg.app, version=version,
                                        hosts=names, message=exc.message)
                raise
        plan = release_spec(project, artifact)
        if run.signals.requested:
            return run.finish(DeploySummary(run.deploy_id, "deploy", "aborted", version,
                                            f"interrupted ({run.signals.requested}) before "
                                            f"anything changed", hosts=names),
                              options.json_path)
        if options.check:
            out.title(f"{strategy}: what would change")
            outcome = StrategyRun.over(strategy, project, conns, plan, run, check=True).run()
            run.report.merge(outcome.report)
            pending_migrations(run, conns, artifact)
            return run.finish(DeploySummary(
                run.deploy_id, "deploy", "checked", version, outcome.message,
                color=outcome.color, previous=outcome.previous, hosts=names,
                phases=outcome.phases), options.json_path)
        return _deploy_locked(run, conns, plan, strategy, options)


def _deploy_locked(run: Run, conns: Mapping[str, Connection], plan: ReleaseSpec,
                   strategy: str, options: DeployOptions) -> DeploySummary:
    """Lock, then read the fleet (inside the lock: what another deploy changed while we
    waited is what we act on), refuse what must be refused before anything changes, back
    up, run the strategy; the journal's end entry and the outcome's events last."""
    project, cfg, out = run.project, run.project.config, run.out
    version = plan.artifact.version
    summary = DeploySummary(run.deploy_id, "deploy", "failed", version, "",
                            hosts=run.web_names)
    before: dict[str, HostView] = {}
    out.title("lock")
    with journal.fleet_lock([conns[h.name] for h in project.hosts], cfg.app, run.deploy_id,
                            ttl=cfg.lock_ttl, break_lock=options.break_lock,
                            version_to=version, strategy=strategy,
                            **run.lock_options(options.lock_wait)) as lock:
        for broken in lock.broken:
            out.line(f"   broke a stale lock: {broken.describe()}", style="yellow")
            run.notes.append(f"broke a stale lock: {broken.describe()}")
        out.line(f"   {cfg.app} locked on {', '.join(lock.hosts)} for deploy {run.deploy_id}")
        run.locked(lock)
        try:
            driven = StrategyRun.over(strategy, project, conns, plan, run)
            before = fleet_views(conns, project.web, cfg.app)
            summary.previous = common_color(before)
            refuse_split(driven)
            run.hook("pre_deploy")
            lock.check()
            if already_serving(before, plan):
                run.notes.append(f"no backup: {plan.release_id} already serves everywhere")
            else:
                out.title("backup")
                backup_before(run, conns)
            run.signals.checkpoint()
            lock.check()
            out.title(f"{strategy}: {cfg.app} {version}")
            outcome = driven.run()
            run.report.merge(outcome.report)
            summary.result = RESULT_OF[outcome.result]
            summary.message = outcome.message
            summary.color, summary.phases = outcome.color, outcome.phases
        except KeyboardInterrupt as exc:
            summary.result = "aborted"
            summary.message = _abort(run, conns, before, exc)
        except HookError as exc:  # pre_deploy: nothing changed; pre_switch: idle colour ready
            summary.message = exc.describe(restore_traffic(run, conns, before)
                                           if exc.point == "pre_switch" else
                                           "nothing was changed")
        except NothingChanged as exc:
            summary.message = f"{exc}; nothing was changed"
        except LockLostError as exc:
            summary.message = f"{exc}; this deploy stopped before its next change"
        except DeployError as exc:
            summary.message = f"{exc}; traffic was not moved"
        finally:
            run.after_hooks(summary)
            lock.end(JOURNAL_RESULT[summary.result], steps=run.report,
                     message=journal_message(summary, run.notes), version_to=version,
                     version_from=versions_from(project, before) or None)
    out.line(f"   lock released on {', '.join(lock.hosts)}"
             + (f" (NOT on {', '.join(lock.release_errors)})" if lock.release_errors else ""))
    run.ended(summary, lock)
    return run.finish(summary, options.json_path)


class NothingChanged(DeployError):
    """A refusal found inside the lock, before any change."""


def refuse_split(driven: StrategyRun) -> None:
    """Refuse (before any hook, backup or change) a fleet whose hosts serve different
    colours or releases, each of them verified: a deliberate split (``--host``) that no
    repair would change. A split left by a failed run (a host serving an unverified
    release) goes on: the strategy repairs it first."""
    fleet = driven.strategy.inspect(driven.ctx)
    if not fleet.split:
        return
    verified = all(s.state_of(s.active_release) is ReleaseState.VERIFIED
                   for s in fleet.hosts.values())
    if verified:
        shown = ", ".join(f"{n} {s.active_release or '-'} on {s.active or 'none'}"
                          for n, s in fleet.hosts.items())
        raise NothingChanged(f"active colours differ across the fleet ({shown}); bring the "
                             f"hosts to one release first (invoke deploy --host ...)")


def already_serving(views: Mapping[str, HostView], plan: ReleaseSpec) -> bool:
    """True when every host already serves this artifact (a no-op deploy: no backup)."""
    for view in views.values():
        live = view.live
        if live is None or live.release_id != plan.release_id or \
                live.sha256 != plan.artifact.sha256 or live.failed:
            return False
    return bool(views)


def _abort(run: Run, conns: Mapping[str, Connection], before: Mapping[str, HostView],
           exc: BaseException) -> str:
    """After an interrupt: restore traffic (signals only print a note meanwhile)."""
    run.signals.cleaning = True
    why = run.signals.requested or "interrupt"
    phase = run.reporter.phase or "start"
    run.out.title(f"{why}: deploy aborted during {phase!r}")
    try:
        where = restore_traffic(run, conns, before)
    except DeployError as error:
        where = f"traffic could not be checked: {error}"
    return f"interrupted ({why}) during {phase!r}; {where}"


