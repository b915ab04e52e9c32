"""A long-running remote command whose output is read as it comes (``logs --follow``).

:meth:`deploykit.connection.Connection.run` collects a command's whole output;
following a log needs the SSH channel itself. :func:`open_stream` starts the
command on the connection's transport (same host key checks, same sudo rule)
and returns a :class:`Stream` yielding lines until it is closed.
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import paramiko

from deploykit.connection import Connection

__all__ = ["Stream", "open_stream"]

_READ_SIZE = 65536


class Stream:
    """The stdout of one running remote command, line by line (stderr is discarded)."""

    def __init__(self, conn: Connection, channel: paramiko.Channel) -> None:
        self.conn = conn
        self.channel = channel
        self._closed = False

    def lines(self, *, poll: float = 0.5) -> Iterator[str]:
        """Lines as they arrive (without their newline) until the command ends or
        :meth:`close` is called; reads wake up every ``poll`` seconds to notice a close."""
        buffer = b""
        chan = self.channel
        while not self._closed:
            try:
                ready, _, _ = select.select([chan], [], [], poll)
            except (OSError, ValueError):  # closed meanwhile
                return
            if not ready:
                continue
            try:
                data = chan.recv(_READ_SIZE) if chan.recv_ready() else b""
                while chan.recv_stderr_ready():
                    chan.recv_stderr(_READ_SIZE)
            except (OSError, paramiko.SSHException):
                return
            if not data:
                if chan.eof_received or chan.closed:
                    break
                continue
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", "replace").rstrip("\r")
        if buffer and not self._closed:
            yield buffer.decode("utf-8", "replace").rstrip("\r")

    def close(self) -> None:
        """Close the channel (the remote side sees its stdin end); safe to call twice."""
        self._closed = True
        try:
            self.channel.close()
        except (OSError, paramiko.SSHException):
            pass


def open_stream(conn: Connection, command: str, *, sudo: bool | None = None) -> Stream:
    """Start ``command`` (a ready shell string, every value in it quoted) on ``conn``'s host;
    its stdin stays open until the stream is closed."""
    chan = conn.open_channel(command, sudo=sudo)
    return Stream(conn, chan)
