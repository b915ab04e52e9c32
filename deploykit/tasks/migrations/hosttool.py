"""A migration tool run on the host over SSH (alembic, Django, Flask-Migrate, a team's own):
its status, an action, its status again, with the release's environment."""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from deploykit.connection import CommandResult, Connection
from deploykit.errors import ConfigError, DeployError, RollbackError, TaskError
from deploykit.result import Result, Status
from deploykit.secrets import Secret
from deploykit.shell import join, quote
from deploykit.task import Facts, Task, UndoStack

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: How much of a tool's output a Result keeps (the end: where errors are).
OUTPUT_TAIL = 2000


def tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


Cmd = str | Sequence[str]


def shell_code(cmd: Cmd) -> str:
    """A command as shell code: a string as written (the caller's), a list quoted."""
    return cmd if isinstance(cmd, str) else join(cmd)


def check_command(kind: str, what: str, cmd: Cmd | None) -> None:
    """Refuse an empty command, and a Secret in one (it would be logged: use env)."""
    if cmd is None:
        return
    if not (cmd.strip() if isinstance(cmd, str) else cmd):
        raise ConfigError(f"{kind}: {what} is empty")
    if not isinstance(cmd, str) and not all(isinstance(a, str) for a in cmd):
        raise ConfigError(f"{kind}: {what} takes strings only; pass a Secret through env= "
                          f"(it is never logged there)")


def _untag(output: str, tag: str) -> tuple[list[str], int | None]:
    """The stdout lines and exit code that :meth:`ToolTask.status_script` printed."""
    lines: list[str] = []
    code: int | None = None
    for line in output.splitlines():
        if line.startswith(f"{tag} "):
            lines.append(line[len(tag) + 1:])
        elif line.startswith(f"{tag}-rc ") and line[len(tag) + 4:].strip().isdigit():
            code = int(line[len(tag) + 4:])
    while lines and not lines[-1].strip():
        lines.pop()
    return lines, code


class ToolTask(Task):
    """A migration tool run over SSH: its status, an action, its status again.

    Subclasses give the status command (:meth:`status_command`), read its
    output (:meth:`read`, facts with a ``status`` key) and say what
    ``data["before"]``/``["after"]`` show (:meth:`describe`). The result is
    ``changed`` only when the status differs after the action.
    """

    tag: ClassVar[str] = "status"

    def __init__(self, *, env: Mapping[str, str | Secret] | None, chdir: str | None,
                 sudo: bool | None, timeout: float | None, name: str | None) -> None:
        super().__init__(name=name)
        for key in env or {}:
            if not _ENV_KEY.match(key):
                raise ConfigError(f"{self.kind}: invalid environment variable name {key!r}")
        if chdir is not None and not chdir.startswith("/"):
            raise ConfigError(f"{self.kind}: chdir must be an absolute path, not {chdir!r}")
        self.env: dict[str, str | Secret] = dict(env or {})
        self.chdir = chdir
        self.sudo = sudo
        self.timeout = timeout

    @abstractmethod
    def status_command(self) -> str:
        """The read-only command (shell code) printing the tool's status."""

    @abstractmethod
    def read(self, lines: list[str]) -> Facts:
        """Facts (with a ``status`` key) from the status command's stdout lines."""

    @abstractmethod
    def describe(self, facts: Facts) -> Any:
        """What ``data["before"]``/``["after"]`` show of a status."""

    @property
    def secrets(self) -> Sequence[Secret]:
        return [v for v in self.env.values() if isinstance(v, Secret)]

    def in_dir(self, command: str) -> str:
        """``command`` run in :attr:`chdir` (in a subshell), if one is set."""
        return f"(cd -- {quote(self.chdir)} && {command})" if self.chdir else command

    def status_script(self) -> str:
        """The status command, its stdout lines tagged, then its exit code."""
        return (f"dk_out=$({self.in_dir(self.status_command())}\n); dk_rc=$?\n"
                f"printf '%s\\n' \"$dk_out\" | sed 's/^/{self.tag} /'\n"
                f"echo \"{self.tag}-rc $dk_rc\"")

    def probe_script(self) -> str:
        if self.secrets or self.sudo is not None:
            return ":"  # probed alone (run): a secret goes in env, never in a logged command
        exports = "".join(f"export {k}={quote(v)}\n" for k, v in self.env.items())
        return exports + self.status_script()

    def parse(self, output: str) -> Facts:
        lines, code = _untag(output, self.tag)
        if code != 0:  # the runner's batched probe: this task then probes alone, for stderr
            raise TaskError(f"{self.status_command()} exited with code {code}")
        return self.read(lines)

    def probe(self, conn: Connection) -> Facts:
        res = conn.run(self.status_script(), write=False, check=False, sudo=self.sudo,
                       env=self.env, task=self.name)
        lines, code = _untag(res.stdout, self.tag)
        if code != 0:
            detail = tail(res.stderr, 1500)
            raise TaskError(f"status command {self.status_command()} "
                            + (f"exited with code {code}" if code is not None else "failed")
                            + (f":\n{detail}" if detail else ""), host=conn.name, task=self.name)
        return self.read(lines)

    def act(self, conn: Connection, command: str, facts: Facts) -> None:
        """Run the tool's action (a write), then read the status again into ``facts``."""
        res = conn.run(self.in_dir(command), check=False, sudo=self.sudo, env=self.env,
                       timeout=self.timeout, task=self.name)
        facts["ran"] = res
        if res.failed:
            detail = tail(res.stderr or res.stdout, 1500)
            raise TaskError(f"{res.command} exited with code {res.exit_code}"
                            + (f":\n{detail}" if detail else ""), host=conn.name, task=self.name)
        facts["after"] = self.probe(conn)

    def push_undo(self, undo: UndoStack, description: str, command: str,
                  needed: Callable[[Connection], bool] = lambda c: True) -> None:
        """Register ``command`` (run like the action) as the undo, run only if ``needed``."""
        where, sudo, env, timeout = self.in_dir(command), self.sudo, self.env, self.timeout
        task = f"undo {self.name}"

        def run(c: Connection) -> None:
            if needed(c):
                c.run(where, sudo=sudo, env=env, timeout=timeout, task=task)

        undo.push(description, run)

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """The task contract, with ``data["before"]``/``["after"]`` and the action's output."""
        conn.secrets.update(self.secrets)
        state: Facts = dict(facts) if facts and "status" in facts else {}
        if not state:
            try:
                state = self.probe(conn)
            except DeployError as exc:
                return Result(host=conn.name, task=self.name, status=Status.FAILED,
                              message=exc.message, check=check)
        result = super().run(conn, check=check, facts=state, undo=undo)
        after: Facts = state.get("after", state)
        result.data.update(before=self.describe(state), after=self.describe(after))
        ran = state.get("ran")
        if isinstance(ran, CommandResult):
            result.data.update(command=ran.command, exit_code=ran.exit_code,
                               stdout=tail(ran.stdout), stderr=tail(ran.stderr))
        if result.changed and not check and after["status"] == state["status"]:
            result.status, result.diff = Status.OK, ""
            result.message = "ran; the status did not change"
        return result


def cannot_undo(message: str) -> Callable[[Connection], None]:
    """An undo action that reports why the change cannot be undone."""
    def fail(conn: Connection) -> None:
        raise RollbackError(message, host=conn.name)
    return fail

