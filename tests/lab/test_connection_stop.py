"""A remote command that times out or is interrupted stops on the host, with its children.

The commands here ignore SIGHUP and start a child that ignores it too (what a
``pip install`` or a ``pg_restore`` behind a shell wrapper looks like to sshd):
closing the SSH channel alone leaves them running. After the timeout or the
Ctrl-C, nothing of the command may be left on the host.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable

import pytest

from deploykit.connection import Connection
from deploykit.errors import RemoteCommandError

pytestmark = pytest.mark.lab


def _stubborn(mark: str) -> str:
    """A shell that ignores SIGHUP and waits on a child ignoring it too; ``mark`` names both."""
    return (f"trap '' HUP; sh -c 'trap \"\" HUP; exec sleep 3{mark}' & "
            f"sleep 3{mark}; wait")


def _left(conn: Connection, mark: str) -> list[str]:
    """Processes still running on the host whose command line holds ``mark``."""
    deadline = time.monotonic() + 10
    while True:
        out = conn.run(f"pgrep -af 'sleep 3{mark}' | grep -v pgrep || true",
                       write=False).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_a_timed_out_command_leaves_nothing_running_on_the_host(
        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    probe = lab_connection("web-1")
    mark = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    with pytest.raises(RemoteCommandError, match="timed out"):
        conn.run(_stubborn(mark), timeout=2)
    assert _left(probe, mark) == []
    assert conn.run("echo still usable").stdout.strip() == "still usable"


def test_an_interrupted_command_leaves_nothing_running_on_the_host(
        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    probe = lab_connection("web-1")
    mark = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    conn.open()
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            conn.run(_stubborn(mark), timeout=60)
    finally:
        timer.cancel()
    assert _left(probe, mark) == []
