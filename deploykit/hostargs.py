"""Task arguments that differ per host: one Runner for a fleet whose paths, ports and
users differ from host to host, with one recap.

::

    from deploykit.hostargs import per_host
    from deploykit.tasks import files

    steps = [
        per_host(files.directory, "{{ app_root }}/releases", mode=0o755,
                 owner=lambda host: host.vars["deploy_user"]),
        per_host(files.file, "{{ app_root }}/app.ini", "port={{ app_port }}\\n"),
        per_host(lambda host: files.symlink(f"{host.vars['app_root']}/current", "releases/v2")),
    ]
    Runner(steps).run(inventory.select("web"))

In the arguments of :func:`per_host`, a string holding ``{{`` or ``{%`` is a Jinja2
template rendered over the host's vars (plus ``inventory_hostname`` and
``group_names``; an undefined name is an error naming the host), and a callable is
called with the :class:`~deploykit.inventory.Host`. :func:`literal` passes a value
through untouched (a string that must keep its braces, a callable the task itself
takes). Given a callable alone, ``per_host(fn)`` builds the whole task per host.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.result import Result
from deploykit.secrets import Secret
from deploykit.task import Facts, Plan, Task, UndoStack

if TYPE_CHECKING:
    from deploykit.inventory import Host

__all__ = ["PerHostTask", "host_context", "jinja_environment", "literal", "per_host",
           "render_for_host"]


class literal:  # lower case: reads as a marker in argument lists, literal("{{ x }}")
    """A per-host argument passed through as it is (no template, no call)."""

    def __init__(self, value: Any) -> None:
        self.value = value


@functools.cache
def jinja_environment() -> Any:
    """The Jinja2 environment of per-host arguments and ``when`` conditions (strict:
    an undefined name is an error); Jinja2 is imported on first use."""
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                              keep_trailing_newline=True)


def host_context(host: Host) -> dict[str, Any]:
    """What templates and conditions see: the host's vars, ``inventory_hostname``,
    ``group_names``."""
    return {**host.vars, "inventory_hostname": host.name, "group_names": list(host.groups)}


def render_for_host(value: Any, host: Host) -> Any:
    """One argument for ``host``: a template string rendered, a callable called, a
    :class:`literal` unwrapped; lists, tuples and dict values resolved likewise."""
    if isinstance(value, literal):
        return value.value
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        import jinja2

        try:
            return jinja_environment().from_string(value).render(host_context(host))
        except jinja2.TemplateError as exc:
            raise ConfigError(f"argument {value!r}: {exc}", host=host.name) from None
    if callable(value) and not isinstance(value, type | Secret):
        return value(host)
    if isinstance(value, list | tuple):
        return type(value)(render_for_host(v, host) for v in value)
    if isinstance(value, Mapping):
        return {k: render_for_host(v, host) for k, v in value.items()}
    return value


class PerHostTask(Task):
    """A task built for each host from per-host arguments (see the module docs)."""

    kind = "per_host"

    def __init__(self, factory: Callable[..., Task], args: Sequence[Any],
                 kwargs: Mapping[str, Any], *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.factory, self.args, self.kwargs = factory, tuple(args), dict(kwargs)
        self._built: dict[str, Task] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        if self._name:
            return self._name
        what = getattr(self.factory, "__qualname__", "task")
        shown = [a for a in self.args if isinstance(a, str)][:1]
        return f"{what} {shown[0]}" if shown else f"{what} (per host)"

    def for_host(self, host: Host) -> Task:
        """The task for ``host`` (built once per host; ConfigError when an argument
        cannot be resolved, naming the host)."""
        with self._lock:
            built = self._built.get(host.name)
        if built is not None:
            return built
        if not self.args and not self.kwargs:
            built = self.factory(host)
        else:
            args = [render_for_host(a, host) for a in self.args]
            kwargs = {k: render_for_host(v, host) for k, v in self.kwargs.items()}
            built = self.factory(*args, **kwargs)
        if not isinstance(built, Task):
            raise ConfigError(f"per_host: {self.name} built {built!r} for host {host.name}, "
                              "not a task")
        if self._name and not built._name:
            built._name = self._name
        with self._lock:
            self._built[host.name] = built
        return built

    # Run on a connection directly: built for the connection's host.
    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """Build the task for ``conn``'s host and run it."""
        return self.for_host(conn.host).run(conn, check=check, facts=facts, undo=undo)

    def _unbuilt(self) -> ConfigError:
        return ConfigError(f"{self.name} takes per-host arguments: build it for a host "
                           "first (task.for_host(host)), or run it with a Runner")

    def probe_script(self) -> str:
        raise self._unbuilt()

    def parse(self, output: str) -> Facts:
        raise self._unbuilt()

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        raise self._unbuilt()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self._unbuilt()


def per_host(factory: Callable[..., Task], *args: Any, name: str | None = None,
             **kwargs: Any) -> PerHostTask:
    """A task whose arguments are resolved per host.

    Args:
        factory: a task function (``files.file``) or, given alone, a callable taking
            the :class:`~deploykit.inventory.Host` and returning the task.
        args, kwargs: the task function's arguments; templates (strings with ``{{``
            or ``{%``) are rendered over the host's vars, callables called with the
            host, :class:`literal` values passed as they are.
        name: the step's name in reports (default: the task's own name on each host).
    """
    return PerHostTask(factory, args, kwargs, name=name)
