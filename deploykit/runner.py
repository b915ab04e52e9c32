"""Run an explicit, ordered list of steps over a set of hosts.

* Hosts run in parallel in a bounded pool (``forks``, default 10), one SSH
  connection each, opened in parallel; the steps of one host run in order.
* Before its first step, a host's probes are batched into **one** round trip
  (file facts answered by one python3 process on the host, not a process per
  path). A change makes stale the facts of what it touched: a task that says
  which paths it touches (:meth:`Task.touches`) leaves the facts of other paths
  in place (unless a path goes through a symlink); any other change drops every
  fact read ahead, and later steps probe for themselves.
* ``serial`` splits the hosts into batches (a count or ``"30%"``); handlers run
  at the end of each batch on the hosts that notified them and did not fail
  (``force_handlers`` runs them on failed hosts too).
* A failing host stops its own steps; the others go on unless more than
  ``max_fail_percentage`` of the hosts *of its batch* failed (each batch is
  judged alone, as Ansible does: with ``serial=2, max_fail_percentage=50`` one
  failure per batch never aborts), or more than ``max_fail_total`` hosts failed
  in the whole run (an optional run-wide budget). Either aborts the run: the
  batch's other hosts stop before their next step and later batches do not
  start. A failing handler fails its host like a failing step (counted, undone).
* Any exception fails only its host: a :class:`~deploykit.errors.DeployError`
  with its message, anything else (a bug, a library's error) with its traceback
  in the report, like Ansible's MODULE FAILURE; the undo runs either way, and an
  undo action that raises does not stop the others.
* ``retries``/``until``/``delay`` per step; ``when`` skips a step by a host-vars
  condition (a Jinja2 expression such as ``"app_port > 8000"``, or a callable).
* Undo: tasks push undo actions as they change things. On failure the runner
  unwinds them in reverse, on the failed host (``undo="host"``, the default),
  on every host of the run (``undo="fleet"``), or not at all (``undo="none"``),
  and the report says what was undone and what could not be.
"""

from __future__ import annotations

import functools
import math
import secrets as _random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import ConfigError, ConnectError, DeployError
from deploykit.facts import FactRequest, python_probe, request_script
from deploykit.hostargs import host_context, jinja_environment
from deploykit.inventory import Host
from deploykit.report import NullReporter, Reporter
from deploykit.result import Result, RunReport, Status
from deploykit.secrets import Secret
from deploykit.task import Facts, Task, UndoStack, failed_unexpectedly

Condition = str | Callable[[Mapping[str, Any]], bool]
UndoScope = Literal["host", "fleet", "none"]


@dataclass
class Step:
    """A task plus how to run it within a run."""

    task: Task
    name: str | None = None
    when: Condition | None = None
    retries: int = 0
    delay: float = 1.0
    until: Callable[[Result], bool] | None = None
    notify: Sequence[str] = ()
    ignore_errors: bool = False

    @property
    def label(self) -> str:
        """The step's name in reports."""
        return self.name or self.task.name


def step(task: Task, **options: Any) -> Step:
    """Wrap a task with run options: ``step(files.file(...), notify=["reload nginx"])``."""
    return Step(task, **options)


@dataclass
class _HostRun:
    """What the runner keeps about one host during a run."""

    host: Host
    conn: Connection | None = None
    undo: UndoStack = field(default_factory=UndoStack)
    notified: set[str] = field(default_factory=set)
    failed: bool = False
    batch: int = 0


def evaluate(condition: Condition, host: Host) -> bool:
    """Evaluate a ``when`` condition against a host's vars (plus ``inventory_hostname``)."""
    context = host_context(host)
    if callable(condition):
        return bool(condition(context))
    import jinja2

    try:
        return bool(jinja_environment().compile_expression(condition)(**context))
    except jinja2.TemplateError as exc:
        raise ConfigError(f"condition {condition!r}: {exc}", host=host.name) from None


def batches(hosts: Sequence[Host], serial: int | str | None) -> list[list[Host]]:
    """Split hosts into serial batches: ``None`` = one batch, ``2`` = pairs, ``"30%"``."""
    if serial is None or not hosts:
        return [list(hosts)] if hosts else []
    if isinstance(serial, str):
        text = serial.strip()
        if not text.endswith("%") or not text[:-1].replace(".", "", 1).isdigit():
            raise ConfigError(f"serial must be a count or a percentage like '30%', not {serial!r}")
        size = max(1, math.ceil(len(hosts) * float(text[:-1]) / 100))
    else:
        if serial < 1:
            raise ConfigError(f"serial must be at least 1, not {serial}")
        size = serial
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]


class Runner:
    """Runs steps over hosts; see the module docstring for the rules."""

    def __init__(
        self,
        steps: Sequence[Task | Step],
        *,
        handlers: Mapping[str, Task | Sequence[Task]] | None = None,
        forks: int = 10,
        serial: int | str | None = None,
        max_fail_percentage: float | None = None,
        max_fail_total: int | None = None,
        force_handlers: bool = False,
        undo: UndoScope = "host",
        check: bool = False,
        reporter: Reporter | None = None,
        run_id: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.steps = [s if isinstance(s, Step) else Step(s) for s in steps]
        self.handlers = {name: [h] if isinstance(h, Task) else list(h)
                         for name, h in (handlers or {}).items()}
        for s in self.steps:
            unknown = [n for n in s.notify if n not in self.handlers]
            if unknown:
                raise ConfigError(f"step {s.label!r} notifies unknown handler {unknown[0]!r}; "
                                  f"handlers: {', '.join(self.handlers) or '(none)'}")
        if forks < 1:
            raise ConfigError(f"forks must be at least 1, not {forks}")
        if undo not in ("host", "fleet", "none"):
            raise ConfigError(f"undo must be 'host', 'fleet' or 'none', not {undo!r}")
        self.forks = forks
        self.serial = serial
        if max_fail_percentage is not None and not 0 <= max_fail_percentage <= 100:
            raise ConfigError(f"max_fail_percentage must be from 0 to 100, "
                              f"not {max_fail_percentage!r}")
        if max_fail_total is not None and (isinstance(max_fail_total, bool)
                                           or not isinstance(max_fail_total, int)
                                           or max_fail_total < 0):
            raise ConfigError(f"max_fail_total must be a count of hosts (0 or more), "
                              f"not {max_fail_total!r}")
        self.max_fail_percentage = max_fail_percentage
        """Abort when more than this percentage of one batch's hosts failed."""
        self.max_fail_total = max_fail_total
        """Abort when more than this many hosts failed over the whole run."""
        self.force_handlers = force_handlers
        self.undo_scope = undo
        self.check = check
        self.reporter: Reporter = reporter or NullReporter()
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S-") + _random.token_hex(3)
        self.connect_timeout = connect_timeout
        self._aborted = threading.Event()
        self._abort_reason = ""
        self._failures_lock = threading.Lock()
        self._failed_per_batch: dict[int, int] = {}
        self._batch_sizes: dict[int, int] = {}
        self._given: dict[str, Connection] = {}
        self.logs: dict[str, list[LoggedCommand]] = {}
        """After :meth:`run`: every command sent, per host (secrets redacted)."""

    # -- the run ---------------------------------------------------------------

    def run(self, hosts: Sequence[Host], *, json_path: str | Path | None = None,
            connections: Mapping[str, Connection] | None = None) -> RunReport:
        """Run every step on every host; return (and optionally write) the report.

        ``connections`` (host name -> open Connection) lets a caller that runs
        several phases keep one SSH connection per host: those are used and left
        open; the runner opens (and closes) its own for the other hosts.
        """
        self._given = dict(connections or {})
        groups = batches(hosts, self.serial)
        secrets: list[Secret] = [s for st in self._all_tasks() for s in st.secrets]
        secrets += [h.password for h in hosts if h.password is not None]
        report = RunReport(run_id=self.run_id, check=self.check, secrets=secrets)
        self.reporter.run_started([h.name for h in hosts], [s.label for s in self.steps],
                                  self.check)
        runs: dict[str, _HostRun] = {}
        try:
            for number, batch in enumerate(groups, start=1):
                if self._aborted.is_set():
                    for host in batch:
                        report.add(Result(host.name, "(run)", Status.SKIPPED,
                                          message=f"not started: {self._abort_reason}"))
                    continue
                batch_runs = [_HostRun(h, batch=number) for h in batch]
                self._batch_sizes[number] = len(batch)
                runs.update((r.host.name, r) for r in batch_runs)
                self._in_pool(batch_runs, functools.partial(self._guarded, self._run_host,
                                                            report=report))
                self._in_pool(batch_runs, functools.partial(self._guarded, self._flush_handlers,
                                                            report=report))
            if self.undo_scope == "fleet" and any(r.failed for r in runs.values()):
                self._in_pool(list(runs.values()), lambda r: self._unwind(r, report))
        finally:
            for r in runs.values():
                if r.conn is not None:
                    self.logs[r.host.name] = list(r.conn.log)
                    if r.host.name not in self._given:
                        r.conn.close()
            report.finish()
            self.reporter.run_finished(report)
        if json_path is not None:
            report.write_json(json_path)
        return report

    def _all_tasks(self) -> list[Task]:
        return [s.task for s in self.steps] + [t for ts in self.handlers.values() for t in ts]

    def _in_pool(self, runs: list[_HostRun], work: Callable[[_HostRun], None]) -> None:
        if not runs:
            return
        with ThreadPoolExecutor(max_workers=min(self.forks, len(runs))) as pool:
            list(pool.map(work, runs))

    def _guarded(self, work: Callable[[_HostRun, RunReport], None], run: _HostRun,
                 report: RunReport) -> None:
        """Run ``work`` for one host; an exception it lets out (a bug in a condition, a
        reporter or the runner) fails that host instead of ending the whole run."""
        try:
            work(run, report)
        except Exception as exc:
            result = failed_unexpectedly(Result(run.host.name, "(run)", Status.FAILED), exc)
            self._finish_step(run, report, result)

    def _run_host(self, run: _HostRun, report: RunReport) -> None:
        host = run.host
        conn = self._given.get(host.name) or Connection(host,
                                                        connect_timeout=self.connect_timeout)
        try:
            conn.open()
        except ConnectError as exc:
            report.mark_unreachable(host.name, str(exc))
            self.reporter.host_failed(host.name, str(exc))
            self._host_failed(run)
            return
        run.conn = conn
        todo: list[tuple[Step, Task]] = []
        for st in self.steps:
            try:
                if st.when is None or evaluate(st.when, host):
                    todo.append((st, self._for_host(st.task, host, report)))
                else:
                    report.add(Result(host.name, st.label, Status.SKIPPED,
                                      message=f"condition is false: {st.when}"))
            except ConfigError as exc:
                self._finish_step(run, report, Result(host.name, st.label, Status.FAILED,
                                                      message=exc.message))
                return
        tasks = [task for _, task in todo]
        prefetched = read_ahead(conn, tasks)
        for position, (st, task) in enumerate(todo):
            if self._aborted.is_set():
                report.add(Result(host.name, st.label, Status.SKIPPED,
                                  message=f"not run: {self._abort_reason}"))
                continue
            self.reporter.step_started(host.name, st.label)
            result = self._attempt(st, task, run, prefetched.facts.pop(position, None))
            if result.changed and not self.check:
                prefetched.after_change(tasks, position)  # never trust a stale fact
            if result.changed:
                run.notified.update(st.notify)
            if not self._finish_step(run, report, result, st.ignore_errors):
                return

    def _finish_step(self, run: _HostRun, report: RunReport, result: Result,
                     ignore_errors: bool = False) -> bool:
        """Record a step's result; on failure stop the host (and maybe the run)."""
        report.add(result)
        self.reporter.step_finished(result)
        if not result.failed or ignore_errors:
            return True
        self._host_failed(run)
        if self.undo_scope == "host":
            self._unwind(run, report)
        return False

    def _host_failed(self, run: _HostRun) -> None:
        """Count a host's first failure against its batch and the run; abort the run
        when ``max_fail_percentage`` (of the batch) or ``max_fail_total`` is exceeded."""
        with self._failures_lock:
            if run.failed:
                return
            run.failed = True
            in_batch = self._failed_per_batch[run.batch] = \
                self._failed_per_batch.get(run.batch, 0) + 1
            total = sum(self._failed_per_batch.values())
            size = self._batch_sizes.get(run.batch, 1)
            reason = ""
            if self.max_fail_percentage is not None \
                    and in_batch * 100 / size > self.max_fail_percentage:
                reason = (f"{in_batch} of {size} hosts of batch {run.batch} failed, more than "
                          f"max_fail_percentage={self.max_fail_percentage:g}%")
            elif self.max_fail_total is not None and total > self.max_fail_total:
                reason = f"{total} hosts failed, more than max_fail_total={self.max_fail_total}"
            if reason and not self._aborted.is_set():
                self._abort_reason = reason
                self._aborted.set()

    @staticmethod
    def _for_host(task: Task, host: Host, report: RunReport) -> Task:
        """The task as it runs on ``host`` (per-host arguments resolved); its secrets
        join the run's, to be redacted everywhere."""
        built = task.for_host(host)
        if built is not task:
            report.secrets.extend(s for s in built.secrets if s not in report.secrets)
        return built

    def _attempt(self, st: Step, task: Task, run: _HostRun, facts: Facts | None) -> Result:
        """Run a step's task (built for the host) with its retries/until policy;
        never raises."""
        assert run.conn is not None
        attempts = st.retries + 1
        result = self._run_task(task, run, facts)
        try:
            for attempt in range(2, attempts + 1):
                if self._satisfied(st, result):
                    break
                time.sleep(st.delay)
                result = self._run_task(task, run, None)
                result.data["attempts"] = attempt
            if st.until is not None and not result.failed and not st.until(result):
                result.status = Status.FAILED
                result.message = f"until condition not met after {attempts} attempt(s)"
        except Exception as exc:  # a bug in an until= callable
            result = failed_unexpectedly(result, exc)
        if st.name:
            result.task = st.name
        return result

    def _run_task(self, task: Task, run: _HostRun, facts: Facts | None) -> Result:
        """``task.run`` on the host's connection; an exception a task's own ``run`` lets
        out becomes a failed result with its traceback."""
        assert run.conn is not None
        started = time.monotonic()
        try:
            return task.run(run.conn, check=self.check, facts=facts, undo=run.undo)
        except DeployError as exc:
            return Result(run.host.name, task.name, Status.FAILED, message=exc.message,
                          duration=time.monotonic() - started, check=self.check)
        except Exception as exc:
            return failed_unexpectedly(Result(run.host.name, task.name, Status.FAILED,
                                              duration=time.monotonic() - started,
                                              check=self.check), exc)

    @staticmethod
    def _satisfied(st: Step, result: Result) -> bool:
        if result.failed:
            return False
        return st.until(result) if st.until is not None else True

    def _flush_handlers(self, run: _HostRun, report: RunReport) -> None:
        """Run the notified handlers on one host; a failing handler fails the host like a
        step (it counts against ``max_fail_*`` and unwinds the host's undo stack)."""
        if run.conn is None or not run.notified or (run.failed and not self.force_handlers):
            return
        for name, tasks in self.handlers.items():
            if name not in run.notified:
                continue
            for task in tasks:
                self.reporter.step_started(run.host.name, f"handler: {name}")
                try:
                    built = self._for_host(task, run.host, report)
                except ConfigError as exc:
                    failed = Result(run.host.name, f"handler: {name}", Status.FAILED,
                                    message=exc.message)
                    self._finish_step(run, report, failed)
                    return
                result = self._run_task(built, run, None)
                result.task = f"handler: {name}"
                if not self._finish_step(run, report, result):
                    return
        run.notified.clear()

    def _unwind(self, run: _HostRun, report: RunReport) -> None:
        if run.conn is None or not run.undo.actions:
            return
        undone, failed = run.undo.unwind(run.conn)
        entry = report.host(run.host.name)
        entry.undone.extend(undone)
        entry.undo_failed.extend(failed)


@dataclass
class Prefetched:
    """Facts read ahead for a host's steps, by step position, and which of them stay
    valid across a change to another path (``canonical``: read by the one-process
    probe, none of their paths going through a symlink)."""

    facts: dict[int, Facts] = field(default_factory=dict)
    canonical: set[int] = field(default_factory=set)

    def after_change(self, tasks: Sequence[Task], position: int) -> None:
        """Forget what the change made by ``tasks[position]`` may have made stale: the
        facts of every path it touches, and everything when its reach is unknown."""
        touched = tasks[position].touches()
        if touched is None or position not in self.canonical:
            self.facts.clear()
            return
        hit = set(touched)
        for index in list(self.facts):
            requests = tasks[index].probe_requests()
            if index not in self.canonical or requests is None \
                    or any(r.path in hit for r in requests):
                del self.facts[index]


def prefetch(conn: Connection, tasks: Sequence[Task]) -> dict[int, Facts]:
    """Probe many tasks in one round trip; returns facts by task position."""
    return read_ahead(conn, tasks).facts


def read_ahead(conn: Connection, tasks: Sequence[Task]) -> Prefetched:
    """Probe many tasks in one round trip (see :class:`Prefetched`).

    Tasks whose probe is file-fact requests are answered by one python3 process on
    the host (their shell snippets when the host has no python3); the others' probes
    each run in their own subshell. Every probe's output sits between marker lines.
    A task whose section cannot be parsed is left out and probes for itself later.
    """
    marker = f"__deploykit_{_random.token_hex(8)}__"
    requested: list[tuple[int, Sequence[FactRequest]]] = []
    shell_parts: list[str] = []
    for i, task in enumerate(tasks):
        requests = task.probe_requests()
        if requests:
            requested.append((i, requests))
            continue
        if task.probe_script().strip() in ("", ":"):
            continue  # probes elsewhere (SQL, Redis, HTTP): nothing to batch
        shell_parts.append(_section(marker, i, task.probe_script()))
    script = "\n".join(shell_parts)
    if requested:
        fallback = "\n".join(_section(marker, i, request_script(r)) for i, r in requested)
        script = (f"if command -v python3 >/dev/null 2>&1; then "
                  f"{python_probe(marker, requested)}\nelse\n{fallback}\nfi\n{script}")
    if not script:
        return Prefetched()
    try:
        out = conn.run(script, write=False, check=False).stdout
    except DeployError:
        return Prefetched()
    found = Prefetched()
    for section in out.split(f"{marker} ")[1:]:
        index_text, _, body = section.partition("\n")
        if index_text == "canonical":
            found.canonical = {int(x) for x in body.split() if x.isdigit()}
            continue
        try:
            index = int(index_text)
            found.facts[index] = tasks[index].parse(body[:-1] if body.endswith("\n") else body)
        except (ValueError, IndexError, KeyError, DeployError):
            continue
    return found


def _section(marker: str, index: int, probe: str) -> str:
    return f"printf '%s\\n' '{marker} {index}'\n( {probe}\n)\nprintf '\\n'"
