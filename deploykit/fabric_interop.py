"""Run deploykit tasks and Runners on a user's ``fabric.Connection`` or ``fabric.Group``.

A fabfile keeps its connections; deploykit brings its tasks and its guarantees::

    from fabric import task
    from deploykit.fabric_interop import run_on_fabric
    from deploykit.tasks import files

    @task
    def motd(c):
        report = run_on_fabric([files.file("/etc/motd", "managed\\n")], c)
        if report.failed:
            raise SystemExit(1)

What the adapter keeps, whatever the fabric configuration says:

* **strict host keys**: fabric's own connections accept any host key
  (``AutoAddPolicy``, no known_hosts loaded). A fabric Connection that is not open
  yet is opened with paramiko's ``RejectPolicy`` against known_hosts (``known_hosts=``,
  else the ssh_config's ``UserKnownHostsFile``, else ``~/.ssh/known_hosts``); one the
  user already opened is used only when the key it accepted is in that file, and
  refused with :class:`~deploykit.errors.HostKeyError` otherwise. The same holds for
  a fabric gateway Connection (a bastion).
* **TCP_NODELAY** on the connection's socket (a gateway's own socket gets it too).
* **secrets off command lines**: commands go through deploykit's
  :meth:`~deploykit.connection.Connection.run` (environment on stdin, ``sudo -n``
  for ``become``), never through fabric's ``run``; fabric's ``inline_ssh_env`` is
  not used.

deploykit leaves the fabric Connection open when it is done: it belongs to the caller.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import paramiko

from deploykit.connection import Connection
from deploykit.errors import AuthenticationError, ConfigError, ConnectError, HostKeyError
from deploykit.inventory import Host
from deploykit.result import Result, RunReport
from deploykit.runner import Runner, Step
from deploykit.task import Task

if TYPE_CHECKING:
    import fabric

__all__ = ["FabricConnection", "from_fabric", "run_on_fabric", "secure", "task_result"]


def _known_hosts(fc: fabric.Connection, given: str | os.PathLike[str] | None) -> str:
    if given is not None:
        return str(given)
    configured = fc.ssh_config.get("userknownhostsfile")
    if configured:
        return os.path.expanduser(str(configured).split()[0])
    return os.path.expanduser("~/.ssh/known_hosts")


def _key_name(fc: fabric.Connection) -> str:
    return fc.host if int(fc.port) == 22 else f"[{fc.host}]:{fc.port}"


def _where(fc: fabric.Connection) -> str:
    return f"{fc.user}@{fc.host}:{fc.port}"


def secure(fc: fabric.Connection, known_hosts: str) -> None:
    """Open ``fc`` (and its gateway) with strict host keys, or check the key an already
    open one accepted; then set TCP_NODELAY. Raises HostKeyError, AuthenticationError
    or ConnectError naming the host and how to fix it."""
    import fabric

    if isinstance(fc.gateway, fabric.Connection):
        secure(fc.gateway, known_hosts)
    trust = (f"check the fingerprint on the host (ssh-keygen -lf "
             f"/etc/ssh/ssh_host_ed25519_key.pub), then trust it with: ssh-keyscan "
             f"-p {fc.port} {fc.host} >> {known_hosts}")
    if fc.is_connected:
        keys = paramiko.HostKeys()
        try:
            keys.load(known_hosts)
        except FileNotFoundError:
            pass
        key = fc.transport.get_remote_server_key()
        if not keys.check(_key_name(fc), key):
            raise HostKeyError(
                f"refusing the open fabric connection to {_where(fc)}: the host key it "
                f"accepted is not in {known_hosts} (fabric's default AutoAddPolicy accepts "
                f"any key, and deploykit never does). Open the connection through deploykit "
                f"instead (pass it unopened), or {trust}", host=fc.original_host)
    else:
        fc.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            fc.client.load_host_keys(known_hosts)
        except FileNotFoundError:
            pass
        try:
            fc.open()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"the host key of {_where(fc)} CHANGED (known_hosts {known_hosts} has "
                f"another). This may be an attack. If the host was really reinstalled, "
                f"remove the old entry with: ssh-keygen -R {_key_name(fc)} -f {known_hosts}",
                host=fc.original_host) from exc
        except paramiko.AuthenticationException as exc:
            raise AuthenticationError(f"{_where(fc)} refused authentication ({exc})",
                                      host=fc.original_host) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(f"the host key of {_where(fc)} is unknown (not in "
                                   f"{known_hosts}); deploykit never trusts a key on its "
                                   f"own: {trust}", host=fc.original_host) from None
            raise ConnectError(f"SSH with {_where(fc)} failed: {exc}",
                               host=fc.original_host) from None
        except OSError as exc:
            raise ConnectError(f"cannot reach {_where(fc)}: {exc.strerror or exc}",
                               host=fc.original_host) from None
    sock = fc.transport.sock
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FabricConnection(Connection):
    """A deploykit :class:`~deploykit.connection.Connection` over a fabric Connection's
    SSH session (opened strictly by :func:`secure`); closing it leaves the fabric
    Connection open."""

    def __init__(self, fc: fabric.Connection, host: Host, **options: Any) -> None:
        super().__init__(host, **options)
        self.fabric = fc

    def _connect(self, sock: Any = None) -> paramiko.SSHClient:
        """The fabric Connection's client, opened strictly (``sock`` is not used: fabric
        makes its own, through its gateway when it has one)."""
        secure(self.fabric, self.host.known_hosts or _known_hosts(self.fabric, None))
        transport = self.fabric.client.get_transport()
        if transport is not None and self.keepalive:
            transport.set_keepalive(self.keepalive)
        client: paramiko.SSHClient = self.fabric.client
        return client

    def close(self) -> None:
        """Forget the session; the fabric Connection stays open (it is the caller's)."""
        with self._lock:
            self._client = None


def from_fabric(fc: fabric.Connection, *, name: str | None = None,
                known_hosts: str | os.PathLike[str] | None = None, become: bool = False,
                vars: Mapping[str, Any] | None = None, **options: Any) -> FabricConnection:
    """A deploykit Connection for ``fc``: ``task.run(from_fabric(c))``.

    Args:
        fc: the fabric Connection (open or not; see the module docs for host keys).
        name: the host's name in reports (default: the name fabric was given,
            ``fc.original_host``, e.g. an ssh_config alias).
        known_hosts: the known_hosts file to check keys against.
        become: run commands through ``sudo -n`` when the user is not root.
        vars: host vars for ``when`` conditions and per-host arguments.
        options: :class:`~deploykit.connection.Connection` options
            (``command_timeout``, ...).
    """
    host = Host(name=name or str(fc.original_host), address=str(fc.host), port=int(fc.port),
                user=str(fc.user), known_hosts=_known_hosts(fc, known_hosts), become=become,
                vars=dict(vars or {}))
    return FabricConnection(fc, host, **options)


def run_on_fabric(work: Runner | Task | Sequence[Task | Step],
                  target: fabric.Connection | Iterable[fabric.Connection], *,
                  known_hosts: str | os.PathLike[str] | None = None, become: bool = False,
                  vars: Mapping[str, Mapping[str, Any]] | None = None,
                  **runner_options: Any) -> RunReport:
    """Run a Runner (or steps, or one task) on a fabric Connection or Group, with one
    report and recap; the fabric connections stay open.

    ``vars`` maps a host's name to its host vars. ``runner_options`` build the Runner
    when ``work`` is not one already (``undo="fleet"``, ``serial=2``, ``reporter=``...).
    Unreachable hosts and refused host keys fail their host in the report, as with an
    inventory.
    """
    import fabric

    connections = [target] if isinstance(target, fabric.Connection) else list(target)
    if not connections:
        raise ConfigError("run_on_fabric: no fabric connection given")
    adapted = [from_fabric(fc, known_hosts=known_hosts, become=become,
                           vars=(vars or {}).get(str(fc.original_host))) for fc in connections]
    names = [c.name for c in adapted]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"run_on_fabric: host {twice[0]} is in the group twice")
    if isinstance(work, Runner):
        if runner_options:
            raise ConfigError("run_on_fabric: give Runner options to the Runner itself")
        runner = work
    else:
        runner = Runner([work] if isinstance(work, Task) else list(work), **runner_options)
    # the runner opens them in its pool, in parallel; a refused key fails its host only
    return runner.run([c.host for c in adapted], connections={c.name: c for c in adapted})


def task_result(task: Task, fc: fabric.Connection, **options: Any) -> Result:
    """Run one task on one fabric Connection and return its Result (never raises for a
    failure on the host; a refused host key or an unreachable host raises)."""
    return task.run(from_fabric(fc, **options))
