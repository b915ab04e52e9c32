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

import contextlib
import hashlib
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import paramiko

from deploykit.errors import ConfigError
from deploykit.shell import quote

__all__ = ["Readable", "TransferCancelled", "cancel_transfers", "check_cancelled",
           "operation", "resume_transfers", "start_ticket", "upload_script"]

class Readable(Protocol):
    """Anything with a binary ``read(n)``: a file opened ``"rb"``, a BytesIO."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""
        ...


_CHUNK = 1 << 20  # read from a local file at a time
_PIECE = 4 * (32768 - 64)  # to paramiko at a time: 4 full SSH packets, no quadratic copying
_tickets = itertools.count(1)
_cancel_below = 0  # operations holding a smaller ticket are cancelled


class TransferCancelled(KeyboardInterrupt):
    """Raised in every command and upload that was running at :func:`cancel_transfers`."""


_local = threading.local()


def start_ticket() -> int:
    """The ticket of the operation this thread is in (:func:`operation`), else a new one
    for an operation starting now (see :func:`check_cancelled`)."""
    ticket = getattr(_local, "ticket", None)
    return ticket if isinstance(ticket, int) else next(_tickets)


@contextlib.contextmanager
def operation() -> Iterator[int]:
    """One ticket for every command run inside (an upload's hash, checks and transfer):
    a :func:`cancel_transfers` during any of them cancels the rest too."""
    outer = getattr(_local, "ticket", None)
    if isinstance(outer, int):
        yield outer
        return
    _local.ticket = ticket = next(_tickets)
    try:
        yield ticket
    finally:
        _local.ticket = None


def cancel_transfers() -> None:
    """Stop every command and upload of this process running now, at its next chunk.

    Each raises :class:`TransferCancelled` (a KeyboardInterrupt) in its own thread,
    after ending its remote processes. For a signal handler: SIGINT and SIGTERM only
    interrupt the main thread, while uploads run in the runner's worker threads.
    Commands started afterwards run normally (the undo, the switch-back).
    """
    global _cancel_below
    _cancel_below = next(_tickets)


def resume_transfers() -> None:
    """Forget a :func:`cancel_transfers` whose operations have not noticed it yet."""
    global _cancel_below
    _cancel_below = 0


def check_cancelled(ticket: int) -> None:
    """Raise :class:`TransferCancelled` when the operation holding ``ticket`` was
    running at the last :func:`cancel_transfers`."""
    if ticket < _cancel_below:
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


def file_sha256(path: Path, ticket: int = 0) -> tuple[str, int]:
    """SHA-256 and size of a local file, read in chunks; computed once per file version
    (path, inode, size, mtime) and process, for an artifact sent to many hosts."""
    try:
        with _hash_lock, path.open("rb") as f:
            info = os.fstat(f.fileno())
            key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns)
            if key not in _hash_cache:
                digest = hashlib.sha256()
                while chunk := f.read(_CHUNK):
                    check_cancelled(ticket)
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


def send_input(chan: paramiko.Channel, prefix: bytes, body: bytes | Readable | None, *,
               ticket: int = 0) -> bool:
    """Send a command's stdin in pieces (checking :func:`cancel_transfers` between them);
    False when the command exited before reading it all (``cat`` on a full disk, a failed
    check): not a lost connection, its exit status and stderr say what happened. A channel
    closed without an exit status is a lost connection (raised)."""
    try:
        for piece in _pieces(prefix, body):
            check_cancelled(ticket)
            chan.sendall(piece)
    except OSError:
        if chan.exit_status_ready():
            return False
        raise
    return True


def upload_script(remote_path: str, *, mode: int | None = None, owner: str | None = None,
                  group: str | None = None) -> str:
    """The remote side of :meth:`~deploykit.connection.Connection.put`: a temporary file
    beside the target gets exactly ``$DK_SIZE`` bytes of stdin, then waits for the
    controller's confirmation line (``sent $DK_SHA256``, see :class:`ConfirmedReader`);
    mode and owner are set and one ``mv`` replaces the target. A failure or a stop
    (SIGTERM, SIGINT, SIGHUP) removes the temporary file."""
    dest = quote(remote_path)
    steps = [
        "set -e",
        f'tmp=$(mktemp "$(dirname -- {dest})/.dk-upload.XXXXXX")',
        "trap 'rm -f \"$tmp\"' EXIT",
        "trap 'exit 143' TERM INT HUP",  # a stopped upload leaves no temporary file
        # SSH's MAC guards the bytes in transit: the host checks the size, not a hash
        'head -c "$DK_SIZE" > "$tmp" || :',
        'got=$(wc -c < "$tmp")',
        '[ "$got" = "$DK_SIZE" ] || '
        '{ echo "upload incomplete: $got of $DK_SIZE bytes written" >&2; exit 3; }',
        "IFS= read -r confirmed || :",
        '[ "$confirmed" = "sent $DK_SHA256" ] || '
        '{ echo "upload not confirmed: the local file changed while it was sent" >&2; '
        "exit 3; }",
    ]
    if mode is not None:
        steps.append(f'chmod {mode:o} "$tmp"')
    else:
        steps.append(f'if [ -e {dest} ]; then chmod --reference={dest} "$tmp"; '
                     f'else chmod 644 "$tmp"; fi')
    if owner or group:
        steps.append(f'chown {quote((owner or "") + (":" + group if group else ""))} "$tmp"')
    steps += [f'mv -f -- "$tmp" {dest}', "trap - EXIT"]
    return "\n".join(steps)
