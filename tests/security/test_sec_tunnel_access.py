"""The database tunnel is not open to every local user of the controller.

A :class:`~deploykit.tunnel.Tunnel` forwards to a service on a lab host (its sshd,
which greets every client with a banner at once). Through the TCP listener, a
connection from this process's user reaches it; one from another local user
(``runuser -u nobody``) is closed without a byte. In Unix-socket mode the socket
lives in a 0700 directory another user cannot even enter, named the way libpq
expects (``host=<directory>``, ``.s.PGSQL.<port>``).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from deploykit.connection import Connection
from deploykit.pg import PgSettings
from deploykit.testing.lab import Lab
from deploykit.tunnel import Tunnel

pytestmark = pytest.mark.lab

PROBE = """
import socket, sys
family, target = sys.argv[1], sys.argv[2]
try:
    if family == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(target)
    else:
        s = socket.create_connection(("127.0.0.1", int(target)), timeout=5)
    s.settimeout(5)
    print(repr(s.recv(16)))
except OSError as exc:
    print("refused:", type(exc).__name__)
"""


def _as_nobody(family: str, target: str) -> str:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another local user")
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    done = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", PROBE, family,
                           target], capture_output=True, text=True, timeout=30, cwd="/")
    return done.stdout.strip() + done.stderr.strip()


def _banner_over_tcp(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        return s.recv(16)


def test_another_local_user_cannot_use_the_tcp_tunnel(
        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    with Tunnel(conn, conn.host.address, 22) as port:
        assert _banner_over_tcp(port).startswith(b"SSH-")
        assert _as_nobody("tcp", str(port)) in ("b''", "refused: ConnectionResetError")
        assert _banner_over_tcp(port).startswith(b"SSH-")  # still serves its own user


def test_the_unix_socket_tunnel_is_private_and_named_for_libpq(
        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    tunnel = Tunnel(conn, conn.host.address, 22, unix=True)
    with tunnel:
        assert tunnel.socket_dir is not None and tunnel.socket_path is not None
        directory = Path(tunnel.socket_dir)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert Path(tunnel.socket_path) == directory / ".s.PGSQL.22"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(tunnel.socket_path)
            s.settimeout(5)
            assert s.recv(16).startswith(b"SSH-")
        assert _as_nobody("unix", tunnel.socket_path).startswith("refused:")
    assert not directory.exists()  # removed on close


def test_psycopg_connects_through_both_kinds_of_tunnel(
        lab: Lab, lab_connection: Callable[[str], Connection]) -> None:
    if not any("db" in spec.roles for spec in lab.specs):
        pytest.skip("needs a db host in the lab")
    db = next(spec.name for spec in lab.specs if "db" in spec.roles)
    conn = lab_connection(db)
    settings = PgSettings.from_host(conn.host)
    password = settings.password.reveal() if settings.password else None
    tcp = Tunnel(conn, settings.server_host, settings.port)
    with tcp as port, psycopg.connect(host="127.0.0.1", port=port, user=settings.user,
                                      dbname="postgres", password=password) as pg:
        assert pg.execute("select 1").fetchone() == (1,)
    unix = Tunnel(conn, settings.server_host, settings.port, unix=True)
    with unix, psycopg.connect(host=unix.socket_dir, port=settings.port, user=settings.user,
                               dbname="postgres", password=password) as pg:
        assert pg.execute("select 2").fetchone() == (2,)
