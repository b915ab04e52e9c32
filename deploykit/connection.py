"""One SSH connection to one host: commands, uploads and downloads.

Built on paramiko, with the safety and speed a deploy tool needs:

* strict host key checking: an unknown or changed key raises
  :class:`~deploykit.errors.HostKeyError` saying how to trust the host; keys are
  never added automatically;
* TCP_NODELAY on the socket (paramiko leaves Nagle on, and every command would
  then wait for a delayed ACK), connect and command timeouts;
* dead-peer detection: SSH keepalives every ``keepalive`` seconds and the socket's
  TCP_USER_TIMEOUT at ``dead_after`` seconds, so a host that vanishes (network
  partition, host down) mid-command is a lost connection within about their sum,
  not a command that waits for its timeout;
* ``become``: commands run through ``sudo -n`` when the login user is not root;
* uploads stream through the command's stdin (in chunks: bounded memory, time
  linear in the size) into a temporary file next to the target; the host checks
  the size and waits for the controller's confirmation that what it sent has the
  announced SHA-256, then replaces the target with one atomic ``mv``: a reader
  never sees half a file; an interrupt or :func:`cancel_transfers` stops it;
* a command abandoned on a timeout or an interrupt is ended on the host with
  every process it started (its session gets SIGTERM, then SIGKILL);
* a command log (:attr:`Connection.log`) of every command sent, secrets
  redacted, each marked as a read or a write: what tests use to prove that a
  no-op run sends no write command.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from deploykit.errors import (
    ConfigError,
    ConnectError,
    RemoteCommandError,
)
from deploykit.secrets import Secret, redact
from deploykit.shell import Command, check_no_nul, quote, render, secrets_in
from deploykit.sshconfig import resolve as resolve_ssh
from deploykit.sshlogin import SshLogin
from deploykit.transfer import (
    ConfirmedReader,
    Readable,
    TransferCancelled,
    cancel_transfers,
    check_cancelled,
    file_sha256,
    operation,
    resume_transfers,
    send_input,
    start_ticket,
    upload_script,
)

if TYPE_CHECKING:
    from deploykit.inventory import Host

__all__ = ["CommandResult", "Connection", "LoggedCommand", "TransferCancelled",
           "cancel_transfers", "connect_all", "resume_transfers"]

log = logging.getLogger("deploykit.connection")
# paramiko logs failures that deploykit reports itself as one clear error (a refused
# port forward: "Secsh channel N open FAILED"); keep them off the user's stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

_READ_SIZE = 65536
_SID_TAG = b"\x1edk-sid "
_SUDO_REFUSED = re.compile(r"^sudo: (a password is required|a terminal is required)"
                           r"|^Sorry, user \S+ is not allowed to execute"
                           r"|is not in the sudoers file", re.MULTILINE)
"""What ``sudo -n`` prints when the login user may not run the command without a password."""
# The session id of the remote shell, read without starting a process (field 6 of
# /proc/$$/stat; sshd starts each command in a session of its own, and sudo's use_pty a
# new one): the first stderr line of every command run() sends, stripped from its result.
_SID_REPORT = ("read -r _ _ _ _ _ __dk_sid _ < /proc/$$/stat 2>/dev/null && "
               "printf '\\036dk-sid %s\\n' \"$__dk_sid\" >&2; unset __dk_sid; ")
_STOP_GRACE = 3.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class CommandResult:
    """What one remote command did: ``.ok`` when it exited 0."""

    host: str
    command: str  # as logged: secrets redacted
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    stdout_bytes: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    @property
    def failed(self) -> bool:
        """True when the command exited non-zero."""
        return self.exit_code != 0


@dataclass(frozen=True)
class LoggedCommand:
    """One entry of :attr:`Connection.log`."""

    command: str  # secrets redacted
    write: bool
    exit_code: int


def _env_marker(text: str) -> str:
    """A random line that ends the env block sent on stdin (never inside ``text``)."""
    while True:
        marker = f"__DK_ENV_END_{secrets.token_hex(8)}__"
        if marker not in text:
            return marker


def _secrets_to_env(command: Command, env: Mapping[str, str | Secret] | None
                    ) -> tuple[Command, Mapping[str, str | Secret] | None]:
    """Replace each Secret of a list command with ``"$__DK_SECRET_n"`` and put its
    value in the environment (sent through stdin), so no secret is on the command line."""
    if isinstance(command, str) or not any(isinstance(a, Secret) for a in command):
        return command, env
    merged: dict[str, str | Secret] = dict(env or {})
    parts: list[str] = []
    for arg in command:
        if isinstance(arg, Secret):
            name = f"__DK_SECRET_{len(merged)}"
            merged[name] = arg
            parts.append(f'"${{{name}}}"')
        else:
            parts.append(quote(arg))
    return " ".join(parts), merged


class Connection(SshLogin):
    """An SSH connection to one inventory host, opened lazily on first use.

    >>> with Connection(host) as conn:          # doctest: +SKIP
    ...     conn.run("uname -r").stdout
    """

    def __init__(
        self,
        host: Host,
        *,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 600.0,
        keepalive: int = 10,
        dead_after: float = 30.0,
    ) -> None:
        self.host = host
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.log: list[LoggedCommand] = []
        self.secrets: set[Secret] = set()
        if host.password is not None:
            self.secrets.add(host.password)
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._jump: Connection | None = None
        self.jumps: list[Host] = []
        """The jump hosts on the way, nearest to the controller first (see sshconfig)."""
        self._config_error: str | None = None
        try:
            self.host, self.jumps = resolve_ssh(host)
        except ConfigError as exc:
            self._config_error = exc.message

    # -- lifecycle -------------------------------------------------------------

    @property
    def name(self) -> str:
        """The host's inventory name."""
        return self.host.name

    @property
    def is_open(self) -> bool:
        """True when the SSH transport is up."""
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def open(self, sock: socket.socket | paramiko.Channel | None = None) -> Connection:
        """Connect and authenticate now (normally done on first use); ``sock``: a TCP
        connection to the host already made (what :func:`connect_all` passes)."""
        with self._lock:
            if not self.is_open:
                self._client = self._connect(sock)
            elif sock is not None:
                sock.close()
        return self

    def close(self) -> None:
        """Close the connection (and its jump host's); safe to call twice."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._jump is not None:
                self._jump.close()
                self._jump = None

    def _sudo_refused(self, sudo: bool | None, stderr: str) -> bool:
        """True when sudo itself refused the command (no passwordless right for it)."""
        become = self.host.become if sudo is None else sudo
        return bool(become and self.host.user != "root" and _SUDO_REFUSED.search(stderr))

    @property
    def needs_proxy(self) -> bool:
        """True when the host is reached through a jump host (no direct TCP connect)."""
        return bool(self.jumps)

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands --------------------------------------------------------------

    def _wrap(self, command: str, sudo: bool | None, env: Mapping[str, str | Secret] | None,
              *, track: bool = False) -> tuple[str, bytes]:
        """The command line to send and the bytes to send before the caller's stdin.

        ``track``: the command first writes one line to stderr naming its session
        (:data:`_SID_LINE`), which :meth:`run` strips, so a timeout or an interrupt can
        end every process the command started (:meth:`_stop_remote`).

        ``env`` never appears in the command line (where ``ps`` on the host would
        show it to every user for the command's duration): its ``export`` lines go
        through stdin, up to a random end marker, and the remote shell reads them
        with ``read`` (one byte at a time, so the caller's stdin that follows is
        left for the command) and ``eval``s them.
        """
        try:
            check_no_nul(command, "command")
        except ConfigError as exc:
            raise ConfigError(exc.message, host=self.name) from None
        prefix = b""
        if env:
            bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
            if bad:
                raise ConfigError(f"invalid environment variable name {bad[0]!r}",
                                  host=self.name)
            for key, value in env.items():
                text = value.reveal() if isinstance(value, Secret) else str(value)
                if "\x00" in text:
                    raise ConfigError(f"environment variable {key} contains a NUL byte (\\x00), "
                                      "which cannot be passed to a remote shell; remove it",
                                      host=self.name)
            exports = "".join(f"export {k}={quote(v)}\n" for k, v in env.items())
            marker = _env_marker(exports)
            prefix = f"{exports}{marker}\n".encode()
            command = (f'__dk_env=; while IFS= read -r __dk_line && [ "$__dk_line" != {marker} ]'
                       '; do __dk_env="$__dk_env$__dk_line\n"; done; eval "$__dk_env"; '
                       f"unset __dk_env __dk_line; {command}")
        if track:
            command = f"{_SID_REPORT}{command}"
        become = self.host.become if sudo is None else sudo
        if become and self.host.user != "root":
            command = f"sudo -n -H -- sh -c {quote(command)}"
        return command, prefix

    def run(
        self,
        command: Command,
        *,
        write: bool = True,
        check: bool = True,
        sudo: bool | None = None,
        env: Mapping[str, str | Secret] | None = None,
        stdin: bytes | str | Readable | None = None,
        timeout: float | None = None,
        task: str | None = None,
    ) -> CommandResult:
        """Run ``command`` on the host and return its result.

        ``command`` is either a ready shell string (every value in it already
        quoted with :func:`deploykit.shell.quote`) or an argument list, which is
        quoted here. ``write=False`` marks a read-only probe in :attr:`log`.
        ``check=True`` raises :class:`RemoteCommandError` on a non-zero exit.
        Secrets (in the list, in ``env``, or the host password) are redacted in
        the log, the result and any error, and never travel in the command line
        (``ps`` on the host shows it): ``env`` goes through stdin, and a Secret
        in a list command becomes a variable reference whose value goes with
        ``env``. A NUL byte in the command or in ``env`` raises ConfigError.
        ``stdin`` may be a binary file object, sent in chunks (memory stays bounded).
        A timeout, an interrupt or :func:`cancel_transfers` ends the command's remote
        processes (see :meth:`_stop_remote`).
        """
        ticket = start_ticket()
        to_log = render(command)[1]
        self.secrets.update(secrets_in(command))
        command, env = _secrets_to_env(command, env)
        to_send = render(command)[0]
        if env:
            self.secrets.update(v for v in env.values() if isinstance(v, Secret))
        to_send, prefix = self._wrap(to_send, sudo, env, track=True)
        client = self.open()._client
        assert client is not None
        transport = client.get_transport()
        assert transport is not None
        started = time.monotonic()
        limit = timeout if timeout is not None else self.command_timeout
        out_parts: list[bytes] = []
        err_parts: list[bytes] = []
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(to_send)
            try:
                if send_input(chan, prefix, stdin.encode() if isinstance(stdin, str)
                              else stdin, ticket=ticket):
                    chan.shutdown_write()
                self._collect(chan, started, limit, to_log, out_parts, err_parts, ticket)
            except BaseException:  # a timeout, Ctrl-C, SIGTERM: the command stops too
                self._stop_remote(chan, err_parts, sudo)
                raise
            exit_code = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise ConnectError(f"connection to {self._where()} lost while running "
                               f"{to_log!r}: {exc or type(exc).__name__}",
                               host=self.name, task=task) from None
        out = b"".join(out_parts)
        err = _strip_session_line(b"".join(err_parts))
        secrets = list(self.secrets)
        result = CommandResult(
            host=self.name,
            command=to_log,
            exit_code=exit_code,
            stdout=redact(out.decode("utf-8", "replace"), secrets),
            stderr=redact(err.decode("utf-8", "replace"), secrets),
            duration=time.monotonic() - started,
            stdout_bytes=out,
        )
        self.log.append(LoggedCommand(to_log, write, exit_code))
        log.debug("%s: %s -> %d (%.3fs)", self.name, to_log, exit_code, result.duration)
        if exit_code == 1 and self._sudo_refused(sudo, result.stderr):
            raise RemoteCommandError(
                f"sudo -n refused to run {to_log!r} as root for {self.host.user} on "
                f"{self.name}: {result.stderr.strip().splitlines()[-1]} (become needs "
                f"passwordless sudo for {self.host.user}: a sudoers rule such as "
                f"'{self.host.user} ALL=(root) NOPASSWD: ALL')",
                host=self.name, task=task, exit_code=exit_code, stdout=result.stdout,
                stderr=result.stderr)
        if check and result.failed:
            detail = (result.stderr or result.stdout).strip()[-2000:]
            raise RemoteCommandError(
                f"command failed with exit code {exit_code}: {to_log}"
                + (f"\n{detail}" if detail else ""),
                host=self.name, task=task, exit_code=exit_code,
                stdout=result.stdout, stderr=result.stderr)
        return result

    def open_channel(self, command: str, *, sudo: bool | None = None) -> paramiko.Channel:
        """Start ``command`` (a ready shell string, every value in it quoted) and return its
        channel, for output or input that streams (``logs --follow``, ``docker save | docker
        load``). Same sudo rule as :meth:`run`; the caller reads, writes and closes the
        channel. ConnectError when the command cannot be started."""
        to_send, _ = self._wrap(command, sudo, None)
        client = self.open()._client
        transport = client.get_transport() if client is not None else None
        try:
            if transport is None:
                raise paramiko.SSHException("the connection is not open")
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(to_send)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise ConnectError(f"cannot start a command on {self._where()}: "
                               f"{exc or type(exc).__name__}", host=self.name) from None
        return chan

    def stream(self, command: str, *, sudo: bool | None = None,
               chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """Run ``command`` (a ready shell string, every value in it quoted) with no stdin
        and yield its stdout as it arrives (``docker save`` of an image, a dump), without
        holding it all in memory. Ends at the command's EOF, not at its exit status (sshd
        may send the status before the last of the output); then RemoteCommandError
        with the stderr tail when the command failed. Logged as a read."""
        chan = self.open_channel(command, sudo=sudo)
        err = bytearray()
        try:
            chan.shutdown_write()
            while True:
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(chunk_size)
                if chan.recv_ready():
                    data = chan.recv(chunk_size)
                    if data:
                        yield data
                        continue
                if chan.eof_received and not chan.recv_ready():
                    break
                transport = chan.get_transport()
                if transport is None or not transport.is_active():
                    raise ConnectError(f"connection to {self._where()} lost while streaming "
                                       f"{command!r}", host=self.name)
                select.select([chan], [], [], 1.0)
            code = chan.recv_exit_status()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(chunk_size)
        finally:
            chan.close()
        secrets = list(self.secrets)
        self.log.append(LoggedCommand(redact(command, secrets), False, code))
        if code != 0:
            detail = redact(bytes(err).decode("utf-8", "replace"), secrets).strip()[-2000:]
            raise RemoteCommandError(f"command failed with exit code {code}: "
                                     f"{redact(command, secrets)}"
                                     + (f"\n{detail}" if detail else ""),
                                     host=self.name, exit_code=code, stderr=detail)

    def _collect(self, chan: paramiko.Channel, started: float, limit: float | None,
                 to_log: str, out: list[bytes], err: list[bytes], ticket: int = 0) -> None:
        """Read the command's stdout and stderr into ``out`` and ``err`` until its EOF;
        RemoteCommandError when ``limit`` seconds have passed since ``started``."""
        while True:
            check_cancelled(ticket)
            while chan.recv_ready():
                out.append(chan.recv(_READ_SIZE))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(_READ_SIZE))
            if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                return
            transport = chan.get_transport()  # a dead peer (dead_after): the transport ends
            if transport is None or not transport.is_active():
                raise EOFError("the SSH connection died (no answer from the host)")
            wait = 1.0
            if limit is not None:
                wait = limit - (time.monotonic() - started)
                if wait <= 0:
                    raise RemoteCommandError(
                        f"command timed out after {limit:g} s: {to_log}", host=self.name)
            select.select([chan], [], [], min(wait, 1.0))

    def _stop_remote(self, chan: paramiko.Channel, err: list[bytes], sudo: bool | None) -> None:
        """End every process of a command that is being abandoned (timeout, interrupt).

        Closing the channel is not enough: without a terminal, sshd sends no SIGHUP, and
        the command (a ``pip install``, a ``pg_restore``) would keep running while its
        undo runs. The command named its session on its first stderr line; a second
        command sends SIGTERM to that session, and SIGKILL to what is left after
        :data:`_STOP_GRACE` seconds. Best effort and bounded in time: a lost connection
        only closes the channel.
        """
        try:
            session = _session_id(chan, err)
            transport = chan.get_transport()
            if session is not None and transport is not None and transport.is_active():
                script = (f"pkill -TERM -s {session}; i=0; while pgrep -s {session} "
                          f">/dev/null && [ $i -lt {int(_STOP_GRACE * 10)} ]; do sleep 0.1; "
                          f"i=$((i+1)); done; pkill -KILL -s {session}; true")
                to_send, _ = self._wrap(script, sudo, None)
                killer = transport.open_session(timeout=self.connect_timeout)
                killer.settimeout(_STOP_GRACE + self.connect_timeout)
                killer.exec_command(to_send)
                killer.shutdown_write()
                deadline = time.monotonic() + _STOP_GRACE + self.connect_timeout
                while not killer.exit_status_ready() and time.monotonic() < deadline:
                    select.select([killer], [], [], 0.2)
                    while killer.recv_ready():
                        killer.recv(_READ_SIZE)
                killer.close()
                log.debug("%s: stopped remote session %s", self.name, session)
        except (paramiko.SSHException, OSError, EOFError):
            pass
        finally:
            chan.close()

    # -- files -----------------------------------------------------------------

    def sha256(self, path: str, *, sudo: bool | None = None) -> str | None:
        """SHA-256 of a remote file, or None when it does not exist (one round trip)."""
        script = f"if [ -f {quote(path)} ]; then sha256sum < {quote(path)}; fi"
        out = self.run(script, write=False, sudo=sudo).stdout.strip()
        return out[:64] if out else None

    def put(
        self,
        data: bytes | str | Path,
        remote_path: str,
        *,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        sudo: bool | None = None,
        skip_identical: bool = True,
    ) -> bool:
        """Upload ``data`` (bytes, text, or a local Path) to ``remote_path`` atomically.

        The bytes go into a temporary file beside the target; its size is checked
        on the host and the controller confirms the SHA-256 of what it sent; mode
        and owner are set, then one ``mv`` replaces the target. Returns False (and
        sends nothing) when the remote file already has the same content and
        ``skip_identical`` is set. The
        checksum travels in the environment, never in the logged command (a
        hash of a weak secret could be guessed back). A Path is read and sent in
        chunks (memory stays bounded, time linear in its size); an interrupt or
        :func:`cancel_transfers` stops the upload and removes the temporary file.
        """
        with operation() as ticket:  # a cancel while hashing stops the whole upload
            payload: bytes | None = None
            if isinstance(data, Path):
                digest, size = file_sha256(data, ticket)
            else:
                payload = data.encode() if isinstance(data, str) else data
                digest, size = hashlib.sha256(payload).hexdigest(), len(payload)
            if skip_identical and self.sha256(remote_path, sudo=sudo) == digest:
                return False
            script = upload_script(remote_path, mode=mode, owner=owner, group=group)
            env: dict[str, str | Secret] = {"DK_SHA256": digest, "DK_SIZE": str(size)}
            if payload is not None:
                self.run(script, sudo=sudo, env=env,
                         stdin=ConfirmedReader(io.BytesIO(payload), size, digest, verify=False))
                return True
            assert isinstance(data, Path)
            with data.open("rb") as source:
                self.run(script, sudo=sudo, env=env, stdin=ConfirmedReader(source, size, digest))
            return True

    def get(self, remote_path: str, local_path: str | Path | None = None, *,
            sudo: bool | None = None) -> bytes:
        """Download a remote file; write it to ``local_path`` when given. Returns its bytes."""
        data = self.run(["cat", "--", remote_path], write=False, sudo=sudo).stdout_bytes
        if local_path is not None:
            Path(local_path).write_bytes(data)
        return data


def _session_id(chan: paramiko.Channel, err: list[bytes]) -> int | None:
    """The remote session id a tracked command wrote on its first stderr line (read from
    the channel for up to a second when it has not been read yet), or None."""
    deadline = time.monotonic() + 1.0
    while True:
        head = b"".join(err[:4])
        if b"\n" in head or (head and not head.startswith(_SID_TAG[:len(head)])):
            break
        if chan.recv_stderr_ready():
            err.append(chan.recv_stderr(_READ_SIZE))
            continue
        if time.monotonic() > deadline or chan.closed:
            break
        time.sleep(0.02)
    first = b"".join(err[:4]).partition(b"\n")[0]
    if not first.startswith(_SID_TAG):
        return None
    value = first[len(_SID_TAG):].strip()
    return int(value) if value.isdigit() and int(value) > 1 else None


def _strip_session_line(err: bytes) -> bytes:
    """``err`` without the session line a tracked command writes first."""
    if err.startswith(_SID_TAG):
        return err.partition(b"\n")[2]
    return err


def connect_all(hosts: Sequence[Host], *, connect_timeout: float = 10.0,
                handshakes: int = 32, **kwargs: float
                ) -> dict[str, Connection | ConnectError]:
    """Open connections to ``hosts``; a host that fails maps to its error (in order).

    See :func:`deploykit.fleetconnect.connect_all`: every TCP connect at once (dead
    hosts cost one ``connect_timeout`` together), SSH handshakes bounded by
    ``handshakes``, MaxStartups drops retried.
    """
    from deploykit.fleetconnect import connect_all as connect_fleet

    return connect_fleet(hosts, connect_timeout=connect_timeout, handshakes=handshakes,
                         **kwargs)
