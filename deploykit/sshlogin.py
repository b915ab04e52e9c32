"""Logging in to a host over SSH: strict host keys, identity files, jump hosts, retries.

The part of :class:`deploykit.connection.Connection` that makes the SSH connection
(:class:`SshLogin`, a mixin): a TCP connection (or a channel through the jump hosts,
see :mod:`deploykit.sshconfig`), host keys checked against known_hosts as OpenSSH
reads it (:mod:`deploykit.hostkeys`: an unknown, changed or revoked key refuses the
host with a message saying how to check and trust it; keys are never added), the
identity file, a password or ssh-agent keys, and a retry when the host drops the
connection before its SSH banner (sshd's MaxStartups).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from deploykit.errors import AuthenticationError, ConnectError, HostKeyError
from deploykit.hostkeys import KnownHostEntry, KnownHosts, host_pattern_name, load_known_hosts

if TYPE_CHECKING:
    from deploykit.inventory import Host

__all__ = ["BANNER_RETRIES", "SshLogin"]

log = logging.getLogger("deploykit.connection")

_key_cache: dict[str, paramiko.PKey] = {}
_key_cache_lock = threading.Lock()


_PUBLIC_KEY_PREFIXES = (b"ssh-", b"ecdsa-", b"sk-", b"---- BEGIN SSH2 PUBLIC KEY")


def _load_key(path: str) -> paramiko.PKey:
    """Load a private key once per process (parsing costs milliseconds per host).
    AuthenticationError naming the file when it is not a private key we can read."""
    with _key_cache_lock:
        key = _key_cache.get(path)
        if key is None:
            try:
                key = paramiko.PKey.from_path(path)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise AuthenticationError(_key_problem(path, exc)) from None
            _key_cache[path] = key
        return key


def _key_problem(path: str, exc: BaseException) -> str:
    """Why ``path`` is not a usable identity file, in one line."""
    try:
        head = Path(path).read_bytes()[:64].lstrip()
    except OSError as err:
        return f"cannot read identity file {path}: {err.strerror or err}"
    if head.startswith(_PUBLIC_KEY_PREFIXES):
        private = path[:-4] if path.endswith(".pub") else "the matching private key"
        return (f"identity file {path} is a public key; identity_file must name the "
                f"private key ({private})")
    detail = str(exc).split(". See https://")[0]  # cryptography's FAQ link adds nothing
    return f"identity file {path} is not a private key paramiko can read: {detail}"



BANNER_RETRIES = 5
"""Retries of a connection dropped before the SSH banner (see :meth:`Connection.open`)."""


class _BannerDropped(Exception):
    """The host closed the connection before its SSH banner."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _UnknownHostKey(paramiko.SSHException):
    """The server's key is not trusted by known_hosts (see :class:`_RefuseUnknown`)."""

    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("host key not trusted")
        self.key = key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never trust a key on its own: raise, carrying the key, for a precise message."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise _UnknownHostKey(key)


def _fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:..." as OpenSSH prints it



class SshLogin:
    """Opening the SSH connection of a :class:`~deploykit.connection.Connection`."""

    host: Host
    jumps: list[Host]
    connect_timeout: float
    keepalive: int
    dead_after: float
    _jump: SshLogin | None
    _config_error: str | None
    _client: paramiko.SSHClient | None

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def open(self, sock: socket.socket | paramiko.Channel | None = None) -> SshLogin:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _where(self) -> str:
        return f"{self.host.address}:{self.host.port}"

    def _connect(self, sock: socket.socket | paramiko.Channel | None = None
                 ) -> paramiko.SSHClient:
        """Connect (over ``sock`` when given, already connected to the host) and log in.

        A connection the host drops before its SSH banner (sshd's MaxStartups refusing
        unauthenticated connections beyond its limit) is retried up to
        :data:`BANNER_RETRIES` times on a new TCP connection, after a jittered backoff.
        """
        host = self.host
        if self._config_error is not None:
            raise ConnectError(self._config_error, host=host.name)
        try:
            pkey = _load_key(str(host.identity_file)) if host.identity_file else None
        except AuthenticationError as exc:
            raise AuthenticationError(exc.message, host=host.name) from None
        known_hosts = host.known_hosts or str(Path("~/.ssh/known_hosts").expanduser())
        try:
            known = load_known_hosts(known_hosts)
        except OSError as exc:
            raise HostKeyError(f"cannot read known_hosts file {known_hosts}: "
                               f"{exc.strerror or exc}", host=host.name) from None
        for attempt in range(BANNER_RETRIES + 1):
            try:
                return self._handshake(sock or self.tcp_connect(), pkey, known)
            except _BannerDropped as exc:
                sock = None
                if attempt == BANNER_RETRIES:
                    raise ConnectError(f"SSH with {self._where()} failed: the host closed "
                                       f"the connection before its SSH banner "
                                       f"{attempt + 1} times ({exc.reason}; sshd's "
                                       f"MaxStartups?)", host=host.name) from None
                delay = min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random())
                log.debug("%s: dropped before the SSH banner (%s); retry in %.2f s",
                          host.name, exc.reason, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def tcp_connect(self) -> socket.socket | paramiko.Channel:
        """A TCP connection to the host's SSH port (through its jump hosts: a channel of
        the last one's connection); ConnectError naming why not."""
        if self.jumps:
            return self._through_jump()
        try:
            return socket.create_connection((self.host.address, self.host.port),
                                            timeout=self.connect_timeout)
        except OSError as exc:
            raise self.tcp_error(exc) from None

    def _through_jump(self) -> paramiko.Channel:
        """A ``direct-tcpip`` channel from the last jump host to this host's SSH port."""
        last = self.jumps[-1]
        if self._jump is None or not self._jump.is_open:
            self._jump = type(self)(last, connect_timeout=self.connect_timeout,  # type: ignore[call-arg]
                                    keepalive=self.keepalive,
                                    dead_after=self.dead_after)
        try:
            client = self._jump.open()._client
        except ConnectError as exc:  # the same kind (a HostKeyError stays one)
            raise type(exc)(f"cannot reach {self._where()}: its jump host "
                            f"{last.address}:{last.port} failed: {exc.message}",
                            host=self.host.name) from None
        transport = client.get_transport() if client is not None else None
        try:
            if transport is None:
                raise paramiko.SSHException("the jump host's connection is not open")
            channel: paramiko.Channel = transport.open_channel(
                "direct-tcpip", (self.host.address, self.host.port), ("127.0.0.1", 0),
                timeout=self.connect_timeout)
            return channel
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"jump host {last.address}:{last.port} cannot reach "
                               f"{self._where()}: {exc or type(exc).__name__}",
                               host=self.host.name) from None

    def tcp_error(self, exc: OSError) -> ConnectError:
        """The ConnectError for a TCP connect that failed with ``exc``."""
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer within {self.connect_timeout:g} s"
        return ConnectError(f"cannot reach {self._where()}: {reason}", host=self.host.name)

    def _handshake(self, sock: socket.socket | paramiko.Channel, pkey: paramiko.PKey | None,
                   known: KnownHosts) -> paramiko.SSHClient:
        host = self.host
        name = host_pattern_name(host.address, host.port)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_RefuseUnknown())
        for key in known.keys_for(name):
            client.get_host_keys().add(name, key.get_name(), key)
        if isinstance(sock, socket.socket):  # a jump host's channel: its socket is tuned
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.dead_after and hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                int(self.dead_after * 1000))
        try:
            client.connect(
                hostname=host.address,
                port=host.port,
                username=host.user,
                pkey=pkey,
                password=host.password.reveal() if host.password else None,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=host.password is None and bool(os.environ.get("SSH_AUTH_SOCK")),
                look_for_keys=host.identity_file is None and host.password is None,
            )
        except _UnknownHostKey as exc:
            client.close()
            raise HostKeyError(self._unknown_key_message(known, name, exc.key),
                               host=host.name) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            revoked = known.revoked(name, exc.key)
            if revoked is not None:
                raise HostKeyError(self._revoked_message(revoked, exc.key),
                                   host=host.name) from None
            raise HostKeyError(
                f"the host key of {self._where()} CHANGED: known_hosts ({known.path}) has "
                f"{_fingerprint(exc.expected_key)}, the host sent {_fingerprint(exc.key)}. "
                f"This may be an attack. If the host was really reinstalled, remove the old "
                f"entry with: ssh-keygen -R {self._known_hosts_name()} -f {known.path}",
                host=host.name) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AuthenticationError(
                f"{host.user}@{self._where()} refused authentication ({exc})",
                host=host.name) from None
        except paramiko.SSHException as exc:
            client.close()
            if "protocol banner" in str(exc):
                raise _BannerDropped(str(exc)) from None
            raise ConnectError(f"SSH with {self._where()} failed: {exc}",
                               host=host.name) from None
        except OSError as exc:
            client.close()
            if isinstance(exc, ConnectionResetError) and client.get_transport() is None:
                raise _BannerDropped(str(exc)) from None
            raise ConnectError(f"connection to {self._where()} lost: {exc}",
                               host=host.name) from None
        transport = client.get_transport()
        if transport is not None and self.keepalive:
            transport.set_keepalive(self.keepalive)
        return client

    def _unknown_key_message(self, known: KnownHosts, name: str, key: paramiko.PKey) -> str:
        """Why a key not trusted by ``known`` is refused: revoked, only a CA, or unknown."""
        revoked = known.revoked(name, key)
        if revoked is not None:
            return self._revoked_message(revoked, key)
        trust = (f"Check the fingerprint on the host (ssh-keygen -lf "
                 f"/etc/ssh/ssh_host_ed25519_key.pub), then trust it with: ssh-keyscan -p "
                 f"{self.host.port} {self.host.address} >> {known.path}")
        authorities = known.authorities_for(name)
        if authorities:
            where = ", ".join(f"line {a.line}" for a in authorities)
            return (f"the host key of {self._where()} is not in {known.path}, which names it "
                    f"only through @cert-authority ({where}); deploykit (paramiko) cannot "
                    f"verify host certificates, so the host's own key must be listed. "
                    f"{trust}")
        return (f"the host key of {self._where()} is unknown (not in {known.path}); "
                f"deploykit never trusts a key on its own. {trust}")

    def _revoked_message(self, entry: KnownHostEntry, key: paramiko.PKey) -> str:
        return (f"the host key of {self._where()} ({_fingerprint(key)}) is REVOKED by "
                f"{entry.path} line {entry.line} (@revoked): refusing to connect. The host "
                f"must get a new key, which you then trust after checking its fingerprint")

    def _known_hosts_name(self) -> str:
        if self.host.port == 22:
            return self.host.address
        return f"[{self.host.address}]:{self.host.port}"

