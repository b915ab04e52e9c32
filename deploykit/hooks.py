"""Hooks: the user's own code at named points of a deploy or rollback.

=================  ===========================================================================
``pre_connect``    before the SSH connections are opened
``pre_deploy``     after pre-flight, the lock taken, before the backup and the strategy
``pre_switch``     before traffic moves to the new colour (blue/green switch phase)
``post_switch``    after traffic moved and was verified through nginx
``post_deploy``    after a deploy succeeded (the lock still held)
``on_failure``     after a deploy or rollback that did not succeed (failed, rolled back,
                   aborted); the lock still held
``on_rollback``    after ``invoke rollback``, and after a deploy that was switched back
=================  ===========================================================================

A hook is either a **Python callable** registered in the project's ``tasks.py``::

    from deploykit import hooks

    @hooks.hook("post_deploy")
    def tell_the_cdn(ctx: hooks.HookContext) -> None:
        purge(ctx.app, ctx.version)            # raise to fail the hook

or an **executable** in ``hooks/`` beside deploykit.yml (``hooks_dir``) named after
its point: ``hooks/pre_deploy``, or ``hooks/pre_deploy.<anything>`` (several run in
name order; ``*.sample``, ``*~`` and ``*.disabled`` are ignored). An executable gets
the context in its environment (:meth:`HookContext.env`: ``DEPLOYKIT_HOOK``,
``DEPLOYKIT_DEPLOY_ID``, ``DEPLOYKIT_APP``, ``DEPLOYKIT_KIND``, ``DEPLOYKIT_VERSION``,
``DEPLOYKIT_HOSTS`` (comma-separated), ``DEPLOYKIT_RESULT``, ``DEPLOYKIT_MESSAGE``,
``DEPLOYKIT_CONFIG``), runs in the project's directory with stdin from /dev/null and
``hook_timeout`` seconds to finish; its output (stdout and stderr) is shown line by
line, prefixed, secrets redacted.

**Failures.** A failing ``pre_*`` hook (non-zero exit, timeout, exception) stops the
run before the change it precedes (:class:`HookError`, naming the hook and the end of
its output). A failing ``post_*``/``on_*`` hook is a warning and a failed
``hook ...`` result in the run report: the deploy's outcome stands.

**Calling deploykit from a hook** (``invoke status``, ``invoke rollback``, or
deploykit's functions from a callable) works: ``DEPLOYKIT_DEPLOY_ID`` is set for the
hook, and the deploy lock is re-entrant for that deploy id (see
:mod:`deploykit.journal`). A run started by a hook runs no hooks itself
(``DEPLOYKIT_HOOK`` is set), so a hook cannot recurse. Check mode runs no hook.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploykit.errors import ConfigError, TaskError
from deploykit.journal import DEPLOY_ID_ENV, NEST_TOKEN_ENV
from deploykit.result import Result, Status
from deploykit.secrets import Secret, redact

__all__ = ["HOOK_ENV", "HOOK_POINTS", "HookContext", "HookError", "Hooks", "after_points",
           "hook", "register", "registered", "unregister"]

HOOK_POINTS = ("pre_connect", "pre_deploy", "post_deploy", "pre_switch", "post_switch",
               "on_failure", "on_rollback")
"""The named points, in the order a deploy meets them (on_* only when they apply)."""
HOOK_ENV = "DEPLOYKIT_HOOK"
"""Set (to the point's name) for a hook: a run started with it set runs no hooks."""
CONTROLLER = "(controller)"
_IGNORED_SUFFIXES = (".sample", "~", ".disabled", ".bak", ".orig")
_TAIL_LINES = 10


@dataclass(frozen=True)
class HookContext:
    """What a hook is told: the point, the run and, after it, its result."""

    point: str
    deploy_id: str
    app: str
    kind: str = "deploy"
    """``deploy`` or ``rollback``."""
    version: str | None = None
    """The version deployed (or rolled back to)."""
    hosts: tuple[str, ...] = ()
    """The web hosts of the run."""
    result: str | None = None
    """``succeeded``, ``failed``, ``rolled_back`` or ``aborted`` (post_deploy, on_*)."""
    message: str = ""
    """What happened, for post_deploy and on_* (secrets redacted)."""
    config: Path | None = None
    """The deploykit.yml of the run."""
    nest_token: str = field(default="", repr=False)
    """The proof a run started by this hook presents to enter the lock (never logged)."""

    def env(self) -> dict[str, str]:
        """The context as ``DEPLOYKIT_*`` environment variables."""
        env = {HOOK_ENV: self.point, DEPLOY_ID_ENV: self.deploy_id, "DEPLOYKIT_APP": self.app,
               "DEPLOYKIT_KIND": self.kind, "DEPLOYKIT_VERSION": self.version or "",
               "DEPLOYKIT_HOSTS": ",".join(self.hosts), "DEPLOYKIT_RESULT": self.result or "",
               "DEPLOYKIT_MESSAGE": self.message}
        if self.config is not None:
            env["DEPLOYKIT_CONFIG"] = str(self.config)
        if self.nest_token:
            env[NEST_TOKEN_ENV] = self.nest_token
        return env


class HookError(TaskError):
    """A hook failed; for a ``pre_*`` hook, the run stopped before its change.

    ``reason`` is one line (``hook pre_deploy (hooks/pre_deploy) exited with code
    1``), ``output`` the end of what the hook printed (secrets redacted).
    """

    def __init__(self, reason: str, *, point: str, hook: str, output: str = "") -> None:
        super().__init__(self.compose(reason, "", output))
        self.reason = reason
        self.point = point
        self.hook = hook
        self.output = output

    @staticmethod
    def compose(reason: str, outcome: str, output: str) -> str:
        """``reason; outcome`` then the hook's output on the following lines."""
        head = f"{reason}; {outcome}" if outcome else reason
        return f"{head}; its output ended with:\n{output}" if output else head

    def describe(self, outcome: str) -> str:
        """The message with what the run did about it (``nothing was changed``)."""
        return self.compose(self.reason, outcome, self.output)


def after_points(kind: str, result: str) -> list[str]:
    """The points that run once a ``kind`` run (deploy, rollback) ended with ``result``:
    ``post_deploy`` after a successful deploy, ``on_failure`` after any run that did not
    succeed, ``on_rollback`` after a rollback and after a deploy that was switched back."""
    ok = result in ("succeeded", "checked")
    return ((["post_deploy"] if kind == "deploy" and ok else [])
            + (["on_failure"] if not ok else [])
            + (["on_rollback"] if kind == "rollback" or result == "rolled_back" else []))


HookFunction = Callable[[HookContext], object]
_registry: dict[str, list[HookFunction]] = {p: [] for p in HOOK_POINTS}


def _check_point(point: str) -> str:
    if point not in HOOK_POINTS:
        raise ConfigError(f"unknown hook point {point!r}: one of {', '.join(HOOK_POINTS)}")
    return point


def register(point: str, function: HookFunction) -> HookFunction:
    """Run ``function(context)`` at ``point`` (in registration order); returns it."""
    _registry[_check_point(point)].append(function)
    return function


def hook(point: str) -> Callable[[HookFunction], HookFunction]:
    """Decorator form of :func:`register`: ``@hooks.hook("post_deploy")``."""
    _check_point(point)
    return lambda function: register(point, function)


def unregister(point: str, function: HookFunction) -> None:
    """Remove a registered callable (no error when it is not registered)."""
    with contextlib.suppress(ValueError):
        _registry[_check_point(point)].remove(function)


def registered(point: str) -> list[HookFunction]:
    """The callables registered for ``point``."""
    return list(_registry[_check_point(point)])


@dataclass
class Hooks:
    """The hooks of one project: executables in ``directory`` and registered callables.

    ``echo`` prints a line (the run's :class:`~deploykit.cli.Output` redacts);
    ``secrets`` are redacted from error messages and report entries too.
    """

    directory: Path | None
    cwd: Path
    timeout: float = 300.0
    echo: Callable[[str], None] = print
    secrets: Sequence[Secret] = ()
    record: Callable[[Result], None] | None = None
    """Where each hook's Result goes as it finishes (the run report's ``add``)."""
    enabled: bool = True
    _functions: dict[str, list[HookFunction]] = field(default_factory=lambda: _registry)

    def __post_init__(self) -> None:
        if os.environ.get(HOOK_ENV):
            self.enabled = False  # started by a hook: no recursion

    def executables(self, point: str) -> list[Path]:
        """``<directory>/<point>`` and ``<point>.*``, by name; a ConfigError for one that
        is not executable."""
        _check_point(point)
        if self.directory is None or not self.directory.is_dir():
            return []
        found = sorted(p for p in self.directory.iterdir()
                       if (p.name == point or p.name.startswith(point + "."))
                       and not p.name.endswith(_IGNORED_SUFFIXES) and not p.is_dir())
        for path in found:
            if not os.access(path, os.X_OK):
                raise ConfigError(f"hook {path} is not executable (chmod +x {path}, or rename "
                                  f"it to {path.name}.disabled)")
        return found

    def check(self) -> None:
        """Fail early (before anything runs) on a hook file that cannot run."""
        if self.enabled:
            for point in HOOK_POINTS:
                self.executables(point)

    def run(self, context: HookContext) -> list[Result]:
        """Run every hook of ``context.point`` in order; one Result per hook (task
        ``hook <point>: <name>``). A failing ``pre_*`` hook raises :class:`HookError`
        (the hooks after it do not run); other failures are printed as warnings."""
        point = _check_point(context.point)
        if not self.enabled:
            return []
        results: list[Result] = []
        hooks: list[tuple[str, Callable[[], str]]] = [
            (self._name(p), functools.partial(self._execute, p, context))
            for p in self.executables(point)]
        hooks += [(getattr(f, "__qualname__", repr(f)), functools.partial(self._call, f, context))
                  for f in self._functions.get(point, [])]
        for name, runner in hooks:
            self.echo(f"-- hook {point}: {name}")
            started = time.monotonic()
            try:
                runner()
            except HookError as exc:
                self._add(results, Result(CONTROLLER, f"hook {point}: {name}", Status.FAILED,
                                          message=exc.message,
                                          duration=time.monotonic() - started))
                if point.startswith("pre_"):
                    raise
                self.echo(f"warning: {exc.reason}")
                continue
            self._add(results, Result(CONTROLLER, f"hook {point}: {name}", Status.OK,
                                      duration=time.monotonic() - started))
        return results

    def _add(self, results: list[Result], result: Result) -> None:
        results.append(result)
        if self.record is not None:
            self.record(result)

    # -- running one hook -------------------------------------------------------------

    def _name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.cwd))
        except ValueError:
            return str(path)

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def _stopped(self, point: str, name: str, why: str,
                 tail: Sequence[str] | None = None) -> HookError:
        """The error for a failed hook: what, why, the end of its output (redacted)."""
        reason = f"hook {point} ({name}) {self._redact(why)}"
        if tail is not None and not any(line.strip() for line in tail):
            reason += " and printed nothing"
        shown = "\n".join(self._redact(line) for line in (tail or [])[-_TAIL_LINES:])
        return HookError(reason, point=point, hook=name, output=shown.strip("\n"))

    def _execute(self, path: Path, context: HookContext) -> str:
        """Run an executable hook, echoing its output; HookError when it fails."""
        name = self._name(path)
        lines: list[str] = []
        try:
            proc = subprocess.Popen([str(path)], cwd=self.cwd, env={**os.environ,
                                                                    **context.env()},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise HookError(f"hook {context.point} ({name}) cannot run: {exc.strerror}",
                            point=context.point, hook=name) from None

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(line)
                self.echo(f"   [{context.point}] {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            reader.join(timeout=5)
            raise self._stopped(context.point, name, f"did not finish within "
                                f"{self.timeout:g} s (hook_timeout) and was killed",
                                lines) from None
        finally:
            if proc.poll() is None:  # interrupted (a second Ctrl-C): the hook goes too
                _kill(proc)
        reader.join(timeout=5)
        if code != 0:
            raise self._stopped(context.point, name, f"exited with code {code}", lines)
        return "\n".join(lines)

    def _call(self, function: HookFunction, context: HookContext) -> str:
        """Call a registered callable with ``DEPLOYKIT_DEPLOY_ID`` and ``DEPLOYKIT_HOOK``
        set meanwhile (deploykit calls inside it re-enter the lock, run no hooks)."""
        name = getattr(function, "__qualname__", repr(function))
        with _environment({HOOK_ENV: context.point, DEPLOY_ID_ENV: context.deploy_id,
                           NEST_TOKEN_ENV: context.nest_token}):
            try:
                function(context)
            except Exception as exc:
                raise self._stopped(context.point, name,
                                    f"raised {type(exc).__name__}: {exc}") from None
        return ""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End the hook's process group (it runs in a session of its own), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
