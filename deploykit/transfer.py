"""Moving bytes to a host: chunked, bounded in memory, linear in time, and stoppable.

Used by :class:`deploykit.connection.Connection` for a command's stdin and for
:meth:`~deploykit.connection.Connection.put`. paramiko's ``Channel.sendall`` copies
the rest of its buffer after every packet (time grows with the square of the size
when handed a whole artifact); here data goes in pieces of a few full SSH packets,
read from a file a chunk at a time. :func:`cancel_transfers` stops every running
transfer and command of the process at its next piece, from any thread (a signal
handler runs in the main thread only, while uploads run in worker threads).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import paramiko

from deploykit.errors import ConfigError

__all__ = ["Readable", "TransferCancelled", "cancel_transfers", "check_cancelled",
           "resume_transfers"]

class Readable(Protocol):
    """Anything with a binary ``read(n)``: a file opened ``"rb"``, a BytesIO."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""
        ...


_CHUNK = 1 << 20  # read from a local file at a time
_PIECE = 4 * (32768 - 64)  # to paramiko at a time: 4 full SSH packets, no quadratic copying
_cancelled = threading.Event()


class TransferCancelled(KeyboardInterrupt):
    """Raised in every running command and upload after :func:`cancel_transfers`."""


def cancel_transfers() -> None:
    """Stop every running command and upload of this process at its next chunk.

    Each raises :class:`TransferCancelled` (a KeyboardInterrupt) in its own thread,
    after ending its remote processes. For a signal handler: SIGINT and SIGTERM only
    interrupt the main thread, while uploads run in the runner's worker threads.
    New commands fail the same way until :func:`resume_transfers`.
    """
    _cancelled.set()


def resume_transfers() -> None:
    """Allow commands and uploads again after :func:`cancel_transfers`."""
    _cancelled.clear()


def check_cancelled() -> None:
    if _cancelled.is_set():
        raise TransferCancelled("cancelled")


class ConfirmedReader:
    """Exactly ``size`` bytes of ``source``, then ``sent <sha256>\\n`` when they hash to
    ``digest`` (checked while they are read, when ``verify``): the confirmation the
    remote script of :meth:`~deploykit.connection.Connection.put` waits for before it
    installs the file. A source
    that changed size or content raises ConfigError, which stops the upload."""

    def __init__(self, source: Readable, size: int, digest: str, *, verify: bool = True
                 ) -> None:
        self._source, self._left, self._digest = source, size, digest
        self._hash = hashlib.sha256() if verify else None
        self._trailer: bytes | None = None

    def read(self, n: int = -1, /) -> bytes:
        """The next piece of the source, then the confirmation line, then ``b\"\"``."""
        if self._left > 0:
            chunk = self._source.read(min(self._left, n if n > 0 else _CHUNK))
            if not chunk:
                raise ConfigError(f"{getattr(self._source, 'name', 'the upload')} changed "
                                  "while it was sent (shorter than when it was hashed)")
            self._left -= len(chunk)
            if self._hash is not None:
                self._hash.update(chunk)
            return chunk
        if self._trailer is None:
            if self._hash is not None and self._hash.hexdigest() != self._digest:
                raise ConfigError(f"{getattr(self._source, 'name', 'the upload')} changed "
                                  "while it was sent (its SHA-256 differs)")
            self._trailer = f"sent {self._digest}\n".encode()
            return self._trailer
        return b""


_hash_cache: dict[tuple[str, int, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a local file, read in chunks; computed once per file version
    (path, inode, size, mtime) and process, for an artifact sent to many hosts."""
    try:
        with _hash_lock, path.open("rb") as f:
            info = os.fstat(f.fileno())
            key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns)
            if key not in _hash_cache:
                digest = hashlib.sha256()
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                _hash_cache[key] = digest.hexdigest()
            return _hash_cache[key], info.st_size
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _pieces(prefix: bytes, body: bytes | Readable | None) -> Iterator[bytes]:
    """``prefix`` then ``body`` (bytes or a binary file read chunk by chunk) in pieces of
    :data:`_PIECE` bytes: linear time, memory bounded by :data:`_CHUNK` for a file."""
    def chunks() -> Iterator[bytes]:
        yield prefix
        if isinstance(body, bytes | bytearray | memoryview):
            yield from (bytes(body[i:i + _CHUNK]) for i in range(0, len(body), _CHUNK))
        elif body is not None:
            while chunk := body.read(_CHUNK):
                yield chunk
    for chunk in chunks():
        view = memoryview(chunk)
        for i in range(0, len(view), _PIECE):
            yield bytes(view[i:i + _PIECE])


def send_input(chan: paramiko.Channel, prefix: bytes, body: bytes | Readable | None) -> bool:
    """Send a command's stdin in pieces (checking :func:`cancel_transfers` between them);
    False when the command exited before reading it all (``cat`` on a full disk, a failed
    check): not a lost connection, its exit status and stderr say what happened. A channel
    closed without an exit status is a lost connection (raised)."""
    try:
        for piece in _pieces(prefix, body):
            check_cancelled()
            chan.sendall(piece)
    except OSError:
        if chan.exit_status_ready():
            return False
        raise
    return True
