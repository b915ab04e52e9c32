"""One shell command on many hosts at once: ``invoke exec "CMD" --group web``.

::

    from deploykit.ops import exec as fleet_exec

    results = fleet_exec.run_everywhere(hosts, "df -h /srv", sudo=False)
    for r in results:
        print(r.host, r.status, r.exit_code, r.duration)

Each host gets its own SSH connection, opened and used in a bounded thread pool
(``forks`` at a time). A host that cannot be reached (connection refused, no
answer, unknown host key) is reported ``unreachable`` with the reason; the
other hosts run anyway. The command is the operator's own shell command, sent
as given: running it is not idempotent and deploykit does not pretend it is
(no probe, no plan: ``--check`` only says what would run where).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from deploykit.connection import Connection
from deploykit.errors import ConfigError, ConnectError, DeployError
from deploykit.inventory import Host
from deploykit.secrets import Secret

__all__ = ["ExecResult", "describe_check", "failures", "run_everywhere", "run_on"]

ExecStatus = Literal["ok", "failed", "unreachable"]
DEFAULT_FORKS = 10
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class ExecResult:
    """What the command did on one host (``exit_code`` None: it did not run to the end)."""

    host: str
    status: ExecStatus
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the command ran and exited 0."""
        return self.status == "ok"


def run_on(host: Host, command: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT,
           connect_timeout: float = 10.0, secrets: Sequence[Secret] = ()) -> ExecResult:
    """Connect to ``host``, run ``command`` (through ``sudo -n`` with ``sudo`` when the login
    user is not root), close; never raises for what happens on the host."""
    started = time.monotonic()
    conn = Connection(host, connect_timeout=connect_timeout, command_timeout=timeout)
    conn.secrets.update(secrets)
    try:
        try:
            conn.open()
        except ConnectError as exc:
            return ExecResult(host.name, "unreachable", None, "", "",
                              time.monotonic() - started, exc.message)
        try:
            res = conn.run(command, check=False, sudo=sudo, task="exec")
        except ConnectError as exc:
            return ExecResult(host.name, "unreachable", None, "", "",
                              time.monotonic() - started, exc.message)
        except DeployError as exc:  # a timeout
            return ExecResult(host.name, "failed", None, "", "", time.monotonic() - started,
                              exc.message)
        return ExecResult(host.name, "ok" if res.ok else "failed", res.exit_code, res.stdout,
                          res.stderr, res.duration,
                          "" if res.ok else f"exit code {res.exit_code}")
    finally:
        conn.close()


def run_everywhere(hosts: Sequence[Host], command: str, *, sudo: bool = False,
                   timeout: float = DEFAULT_TIMEOUT, forks: int = DEFAULT_FORKS,
                   secrets: Sequence[Secret] = (),
                   on_result: Callable[[ExecResult], None] | None = None) -> list[ExecResult]:
    """:func:`run_on` every host, ``forks`` at a time; results in ``hosts`` order.

    ``on_result`` is called (from a worker thread) as each host finishes, e.g. to print
    its output while the others still run.
    """
    if not command.strip():
        raise ConfigError("exec: the command is empty")
    if forks < 1:
        raise ConfigError(f"exec: forks must be at least 1, not {forks}")
    if timeout <= 0:
        raise ConfigError(f"exec: timeout must be positive, not {timeout:g}")

    def one(host: Host) -> ExecResult:
        result = run_on(host, command, sudo=sudo, timeout=timeout, secrets=secrets)
        if on_result is not None:
            on_result(result)
        return result

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(forks, len(hosts))) as pool:
        return list(pool.map(one, hosts))


def failures(results: Sequence[ExecResult]) -> str | None:
    """``failed on web-2 (exit code 3); unreachable: web-1``, or None when every host
    succeeded."""
    failed = [f"{r.host} ({r.message})" for r in results if r.status == "failed"]
    unreachable = [r.host for r in results if r.status == "unreachable"]
    parts = ([f"failed on {', '.join(failed)}"] if failed else []) + (
        [f"unreachable: {', '.join(unreachable)}"] if unreachable else [])
    return "; ".join(parts) or None


def describe_check(hosts: Sequence[Host], command: str, *, sudo: bool = False) -> list[str]:
    """What ``--check`` prints: one line per host saying how the command would run."""
    if not command.strip():
        raise ConfigError("exec: the command is empty")
    lines = []
    for h in hosts:
        how = f"{h.user}@{h.address}:{h.port}"
        if sudo and h.user != "root":
            how += ", through sudo -n"
        lines.append(f"would run on {h.name} ({how}): {command}")
    return lines
