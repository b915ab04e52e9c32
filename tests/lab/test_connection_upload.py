"""Uploads stream: memory stays bounded whatever the size, and an interrupt stops them.

``Connection.put`` of a local file reads it in chunks (the whole file was read into
memory, then handed to paramiko's ``sendall``, whose copies made the time grow with the
square of the size). A cancelled or interrupted upload stops sending, ends the remote
``cat`` and leaves no temporary file beside the target.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploykit import connection as connection_module
from deploykit.connection import Connection, TransferCancelled
from deploykit.errors import RemoteCommandError

pytestmark = pytest.mark.lab

TARGET_DIR = "/srv/dk-upload-test"


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Iterator[Connection]:
    c = lab_connection("web-1")
    c.run(["mkdir", "-p", TARGET_DIR])
    yield c
    connection_module.resume_transfers()
    c.run(["rm", "-rf", TARGET_DIR])


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def _leftovers(conn: Connection) -> list[str]:
    """Temporary upload files and upload processes still on the host."""
    deadline = time.monotonic() + 10
    while True:
        out = conn.run(f"ls -A {TARGET_DIR}; pgrep -af 'cat > ' | grep -v pgrep || true",
                       write=False).stdout.split()
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_a_file_upload_holds_bounded_memory(conn: Connection, tmp_path: Path) -> None:
    local = tmp_path / "artifact.bin"
    digest = _random_file(local, 48 << 20)
    target = f"{TARGET_DIR}/artifact.bin"
    tracemalloc.start()
    try:
        assert conn.put(local, target, mode=0o600) is True
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 48 MiB upload"
    assert conn.sha256(target) == digest
    assert conn.put(local, target, mode=0o600) is False  # identical: nothing sent


def test_bytes_uploads_still_arrive_whole(conn: Connection) -> None:
    data = os.urandom(3 << 20) + b"end"
    target = f"{TARGET_DIR}/blob"
    assert conn.put(data, target) is True
    assert conn.get(target) == data


def test_a_cancelled_upload_stops_and_leaves_nothing(conn: Connection, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    with local.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB to send, nothing to write here
    outcome: list[object] = []

    def upload() -> None:
        try:
            outcome.append(conn.put(local, f"{TARGET_DIR}/big.bin"))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=upload)
    worker.start()
    time.sleep(1.0)
    connection_module.cancel_transfers()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the upload did not stop"
    assert len(outcome) == 1 and isinstance(outcome[0], TransferCancelled), outcome
    assert _leftovers(conn) == []  # a command started after the cancel runs normally


def test_an_interrupted_upload_stops_and_leaves_nothing(conn: Connection,
                                                         tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    with local.open("wb") as f:
        f.truncate(1 << 30)
    conn.open()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            conn.put(local, f"{TARGET_DIR}/big.bin")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 60
    assert _leftovers(conn) == []


def test_an_upload_to_a_full_disk_fails_clearly_and_leaves_nothing(conn: Connection) -> None:
    small = f"{TARGET_DIR}/small"
    conn.run(f"mkdir -p {small} && mount -t tmpfs -o size=1m dk-upload-test {small}")
    try:
        with pytest.raises(RemoteCommandError) as info:
            conn.put(os.urandom(3 << 20), f"{small}/blob")
        assert "No space left on device" in str(info.value)
        assert "upload incomplete" in str(info.value)
        assert conn.run(["ls", "-A", small]).stdout == ""
    finally:
        conn.run(f"umount {small}")
