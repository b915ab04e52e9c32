"""Connecting to a host's PostgreSQL from the controller, with psycopg 3.

By default the connection goes through an SSH local port forward over the
host's deploykit :class:`~deploykit.connection.Connection` (see
:mod:`deploykit.tunnel`): the database port never needs to be open to the
controller. ``postgres_direct: true`` in the host's vars connects straight to
``address:postgres_port`` instead.

Host vars read (all optional):

=========================  ===================================================
``postgres_port``          server port (5432)
``postgres_user``          login role (``postgres``)
``postgres_password``      password (a string or Secret)
``postgres_password_file`` a controller-side file holding the password
``postgres_host``          server address as seen from the host (127.0.0.1)
``postgres_direct``        connect without the SSH forward (false)
``postgres_access``        how pg_dump/pg_restore run on the host: ``socket`` (as
                           ``postgres_os_user`` over the Unix socket), ``tcp``
                           (user and password) or ``docker`` (``docker exec``
                           into ``postgres_container``); unset: the task decides
``postgres_os_user``       OS user for socket/docker access (``postgres``)
``postgres_container``     container name for docker access
=========================  ===================================================
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.inventory import Host
from deploykit.secrets import Secret, redact
from deploykit.tunnel import Tunnel


@dataclass(frozen=True)
class PgSettings:
    """How to reach one host's PostgreSQL server."""

    port: int = 5432
    user: str = "postgres"
    password: Secret | None = None
    server_host: str = "127.0.0.1"
    direct: bool = False
    access: str | None = None
    os_user: str | None = None
    container: str | None = None

    @classmethod
    def from_host(cls, host: Host) -> PgSettings:
        """Read the settings from a host's vars (see the module docstring)."""
        v = host.vars
        password = v.get("postgres_password")
        if password is None and v.get("postgres_password_file"):
            path = Path(str(v["postgres_password_file"])).expanduser()
            try:
                password = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"postgres_password_file {path}: {exc.strerror}",
                                  host=host.name) from None
        try:
            port = int(v.get("postgres_port", 5432))
        except (TypeError, ValueError):
            raise ConfigError(f"postgres_port must be a number, not {v['postgres_port']!r}",
                              host=host.name) from None
        return cls(
            port=port,
            user=str(v.get("postgres_user", "postgres")),
            password=None if password is None else Secret(password),
            server_host=str(v.get("postgres_host", "127.0.0.1")),
            direct=bool(v.get("postgres_direct", False)),
            access=_access(v.get("postgres_access"), host),
            os_user=None if v.get("postgres_os_user") is None else str(v["postgres_os_user"]),
            container=None if v.get("postgres_container") is None
            else str(v["postgres_container"]),
        )


def _access(value: object, host: Host) -> str | None:
    if value is None:
        return None
    if value not in ("socket", "tcp", "docker"):
        raise ConfigError(f"postgres_access must be socket, tcp or docker, not {value!r}",
                          host=host.name)
    return str(value)


def url(host: Host, dbname: str, *, settings: PgSettings | None = None) -> Secret:
    """``postgresql://user:password@address:port/dbname`` for an app reaching ``host``'s
    server over the network (the password percent-encoded); a Secret."""
    s = settings or PgSettings.from_host(host)
    user = urllib.parse.quote(s.user, safe="")
    auth = user if s.password is None else (
        f"{user}:{urllib.parse.quote(s.password.reveal(), safe='')}")
    return Secret(f"postgresql://{auth}@{host.address}:{s.port}/{dbname}")


@contextlib.contextmanager
def connect(
    conn: Connection,
    dbname: str = "postgres",
    *,
    settings: PgSettings | None = None,
    autocommit: bool = True,
    connect_timeout: int = 10,
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A psycopg connection to ``dbname`` on ``conn``'s host (tunnelled unless direct).

    Errors become :class:`TaskError` naming the host, database and reason, with
    the password redacted.
    """
    s = settings or PgSettings.from_host(conn.host)
    if s.password is not None:
        conn.secrets.add(s.password)
    tunnel = None if s.direct else Tunnel(conn, s.server_host, s.port)
    try:
        port = tunnel.open() if tunnel else s.port
        address = "127.0.0.1" if tunnel else conn.host.address
        try:
            pg = psycopg.connect(host=address, port=port, user=s.user, dbname=dbname,
                                 password=s.password.reveal() if s.password else None,
                                 connect_timeout=connect_timeout, autocommit=autocommit)
        except psycopg.Error as exc:
            reason = redact(str(exc).strip(), [s.password] if s.password else [])
            # libpq names the tunnel's local end ("127.0.0.1", port 40123): say where
            # the server really is instead, and keep libpq's own reason.
            reason = re.sub(r'^connection failed: connection to server at "[^"]*", '
                            r'port \d+ failed: ', "", reason)
            server = (f"{s.server_host}:{s.port} on {conn.name} through SSH" if tunnel
                      else f"{conn.host.address}:{s.port}")
            raise TaskError(f"cannot connect to PostgreSQL database {dbname!r} as {s.user!r} "
                            f"at {server}: {reason}", host=conn.name) from None
        with pg:
            yield pg
    finally:
        if tunnel is not None:
            tunnel.close()
