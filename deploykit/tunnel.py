"""SSH local port forwards: reach a host's PostgreSQL or Redis without opening its port.

    with Tunnel(conn, "127.0.0.1", 5432) as port:
        psycopg.connect(host="127.0.0.1", port=port, ...)

A :class:`Tunnel` listens on 127.0.0.1 on the controller (a free port), and
each accepted client gets its own ``direct-tcpip`` channel over the host's
existing SSH connection: no second SSH login, no port open to the controller.
One thread accepts; one thread per client pumps bytes both ways.
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType

import paramiko

from deploykit.connection import Connection
from deploykit.errors import ConnectError

_CHUNK = 65536


class Tunnel:
    """A local port forwarded to ``remote_host:remote_port`` as seen from the host."""

    def __init__(self, conn: Connection, remote_host: str, remote_port: int) -> None:
        self.conn = conn
        self.remote = (remote_host, int(remote_port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name=f"tunnel-{self.port}",
                                          daemon=True)

    def open(self) -> int:
        """Start forwarding; returns the local port."""
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
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

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
