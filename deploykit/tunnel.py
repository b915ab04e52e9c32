"""SSH local forwards: reach a host's PostgreSQL or Redis without opening its port.

    with Tunnel(conn, "127.0.0.1", 5432) as port:
        psycopg.connect(host="127.0.0.1", port=port, ...)

    tunnel = Tunnel(conn, "127.0.0.1", 5432, unix=True)
    with tunnel:
        psycopg.connect(host=tunnel.socket_dir, port=5432, ...)   # libpq finds the socket
        # or redis.Redis(unix_socket_path=tunnel.socket_path) for a Redis tunnel

Each accepted client gets its own ``direct-tcpip`` channel over the host's existing SSH
connection: no second SSH login, no port opened on the host. One thread accepts; one
thread per client pumps bytes both ways.

Only the controller user running deploykit can use a tunnel (it reaches the database
as the host's localhost, with no further check):

* TCP mode (the default, on 127.0.0.1 and a free port): each accepted connection's
  owner is looked up in ``/proc/net/tcp``; a connection from any other user is closed
  at once, before a byte is forwarded;
* Unix-socket mode (``unix=True``): the socket is ``.s.PGSQL.<port>`` (the name libpq
  looks for under ``host=<directory>``) in a fresh 0700 directory only this user can
  enter, removed on close.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType

import paramiko

from deploykit.connection import Connection
from deploykit.errors import ConnectError

_CHUNK = 65536
log = logging.getLogger("deploykit.tunnel")


def _tcp_owner(local_port: int, peer_port: int) -> int | None:
    """The uid owning the loopback TCP connection from ``peer_port`` to ``local_port``
    (Linux ``/proc/net/tcp`` and ``tcp6``), or None when it cannot be found."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                src = int(fields[1].rsplit(":", 1)[1], 16)
                dst = int(fields[2].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if src == peer_port and dst == local_port:
                return int(fields[7])
    return None


class Tunnel:
    """A local endpoint forwarded to ``remote_host:remote_port`` as seen from the host:
    a 127.0.0.1 port (only this user's connections are served), or with ``unix=True`` a
    Unix socket in a private directory."""

    def __init__(self, conn: Connection, remote_host: str, remote_port: int, *,
                 unix: bool = False) -> None:
        self.conn = conn
        self.remote = (remote_host, int(remote_port))
        self.socket_dir: str | None = None
        self.socket_path: str | None = None
        if unix:
            self.socket_dir = tempfile.mkdtemp(prefix="deploykit-tunnel-")  # mode 0700
            self.socket_path = os.path.join(self.socket_dir, f".s.PGSQL.{int(remote_port)}")
            self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._server.bind(self.socket_path)
            os.chmod(self.socket_path, 0o600)
            self._server.listen()
            self.port: int = int(remote_port)
        else:
            self._server = socket.create_server(("127.0.0.1", 0))
            self.port = self._server.getsockname()[1]
        self._server.settimeout(0.2)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name=f"tunnel-{self.port}",
                                          daemon=True)

    def open(self) -> int:
        """Start forwarding; returns the local port (in Unix-socket mode the remote port:
        the socket is :attr:`socket_path`, its directory :attr:`socket_dir`)."""
        self.conn.open()
        self._accepter.start()
        return self.port

    def close(self) -> None:
        """Stop accepting and close every forwarded connection."""
        self._closed.set()
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() at once
        except OSError:
            pass
        self._server.close()
        if self._accepter.is_alive():
            self._accepter.join(timeout=2)
        for thread in self._threads:
            thread.join(timeout=2)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> int:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.socket_dir is None and not self._own_user(client):
                client.close()  # another local user: nothing is forwarded
                continue
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _own_user(self, client: socket.socket) -> bool:
        """True when the connecting TCP client belongs to this process's user."""
        try:
            peer_port = client.getpeername()[1]
        except OSError:
            return False
        owner = _tcp_owner(self.port, peer_port)
        if owner != os.getuid():
            log.warning("tunnel to %s:%s on %s: refused a connection from local uid %s",
                        self.remote[0], self.remote[1], self.conn.name, owner)
            return False
        return True

    def _channel(self) -> paramiko.Channel:
        client = self.conn.open()._client
        transport = client.get_transport() if client else None
        if transport is None:
            raise ConnectError("no SSH transport for the tunnel", host=self.conn.name)
        try:
            return transport.open_channel("direct-tcpip", self.remote, ("127.0.0.1", self.port),
                                          timeout=self.conn.connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectError(f"cannot forward to {self.remote[0]}:{self.remote[1]}: {exc}",
                               host=self.conn.name) from None

    def _pump(self, client: socket.socket) -> None:
        if client.family != socket.AF_UNIX:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            chan = self._channel()
        except ConnectError:
            client.close()  # the client sees a closed connection, as with a refused port
            return
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([client.fileno(), chan.fileno()], [], [], 0.2)
                if client.fileno() in ready:
                    data = client.recv(_CHUNK)
                    if not data:
                        break
                    chan.sendall(data)
                if chan.fileno() in ready:
                    data = chan.recv(_CHUNK)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            chan.close()
            client.close()
