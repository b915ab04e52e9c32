"""Connecting to a whole fleet: dead hosts cost one timeout together, not one each.

:func:`connect_all` first makes every host's TCP connection **at once** (non-blocking
sockets and one selector, no thread per host), so a fleet whose unreachable hosts
never answer is told so after one ``connect_timeout``, whatever its size, while the
live hosts go on. The SSH handshakes (key exchange and login, CPU-bound on both
sides) then run in a pool of ``handshakes`` threads, which also bounds the
unauthenticated connections a host sees; a connection dropped before the SSH banner
(sshd's MaxStartups) is retried by :meth:`~deploykit.connection.Connection.open`.
Hosts whose SSH port is reached through another host (a jump host) connect in the
pool with their own :meth:`~deploykit.connection.Connection.open`.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from deploykit.connection import Connection
from deploykit.errors import ConnectError

if TYPE_CHECKING:
    from deploykit.inventory import Host

log = logging.getLogger("deploykit.connection")

__all__ = ["connect_all"]


def _start(conn: Connection) -> socket.socket:
    """A non-blocking socket whose connect to the host's SSH port is under way."""
    host = conn.host
    info = socket.getaddrinfo(host.address, host.port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], info[1], info[2])
    sock.setblocking(False)
    code = sock.connect_ex(info[4])
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(code, errno.errorcode.get(code, str(code)))
    return sock


def _tcp_all(conns: Sequence[Connection], timeout: float
             ) -> dict[str, socket.socket | ConnectError]:
    """Every connection's TCP connect at once; each host maps to its socket or error."""
    out: dict[str, socket.socket | ConnectError] = {}
    selector = selectors.DefaultSelector()
    for conn in conns:
        log.debug("tcp connect %s (%s:%d)", conn.name, conn.host.address, conn.host.port)
        try:
            selector.register(_start(conn), selectors.EVENT_WRITE, conn)
        except OSError as exc:
            log.debug("tcp failed %s: %s", conn.name, exc)
            out[conn.name] = conn.tcp_error(exc)
    deadline = time.monotonic() + timeout
    while selector.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in selector.select(timeout=min(left, 1.0)):
            sock, conn = key.fileobj, key.data
            assert isinstance(sock, socket.socket) and isinstance(conn, Connection)
            selector.unregister(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                sock.close()
                log.debug("tcp failed %s: %s", conn.name, errno.errorcode.get(code, code))
                out[conn.name] = conn.tcp_error(OSError(code, os.strerror(code)))
            else:
                sock.setblocking(True)
                sock.settimeout(conn.connect_timeout)
                out[conn.name] = sock
    for key in list(selector.get_map().values()):
        sock, conn = key.fileobj, key.data
        assert isinstance(sock, socket.socket) and isinstance(conn, Connection)
        selector.unregister(sock)
        sock.close()
        log.debug("tcp failed %s: no answer within %g s", conn.name, timeout)
        out[conn.name] = conn.tcp_error(TimeoutError(errno.ETIMEDOUT, "timed out"))
    selector.close()
    return out


def connect_all(hosts: Sequence[Host], *, connect_timeout: float = 10.0,
                handshakes: int = 32, **kwargs: float) -> dict[str, Connection | ConnectError]:
    """Open a :class:`Connection` to each host; a host that fails maps to its
    ConnectError. Keys follow ``hosts``' order.

    Every TCP connect starts at once and ends within ``connect_timeout`` (so the
    unreachable hosts of any fleet are reported after about one timeout, the live
    ones still connected); then at most ``handshakes`` SSH handshakes run at a time.
    ``kwargs`` go to each :class:`Connection` (``command_timeout``, ``keepalive``...).
    """
    conns = [Connection(h, connect_timeout=connect_timeout, **kwargs)  # type: ignore[arg-type]
             for h in hosts]
    direct = [c for c in conns if not c.needs_proxy]
    sockets = _tcp_all(direct, connect_timeout)

    def one(conn: Connection) -> Connection | ConnectError:
        got = sockets.get(conn.name)
        if isinstance(got, ConnectError):
            return got
        try:
            return conn.open(got)
        except ConnectError as exc:
            return exc

    waiting = [c for c in conns if not isinstance(sockets.get(c.name), ConnectError)]
    results: dict[str, Connection | ConnectError] = {
        name: err for name, err in sockets.items() if isinstance(err, ConnectError)}
    if waiting:
        with ThreadPoolExecutor(max_workers=max(1, min(handshakes, len(waiting)))) as pool:
            results.update(zip((c.name for c in waiting), pool.map(one, waiting), strict=True))
    return {h.name: results[h.name] for h in hosts}
