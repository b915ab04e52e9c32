"""How PostgreSQL's client programs (pg_dump, pg_restore) reach the server on the db host.

Three ways, one small value (:class:`Access`)::

    Access.socket()                 # as the OS user postgres, over the Unix socket (peer)
    Access.tcp()                    # over TCP as postgres_user, the password on stdin
    Access.docker("db")             # docker exec into container "db", as its postgres user

Host vars choose one when a task is not given any (``postgres_access: socket | tcp |
docker``, ``postgres_os_user``, ``postgres_container``; see :mod:`deploykit.pg`).
A password never appears on a command line: the script reads it from stdin into
``PGPASSWORD`` (:data:`READ_PASSWORD`), and ``docker exec -e PGPASSWORD`` passes the
variable by name. Dump files stay on the host: ``docker exec -i`` streams them
through stdin and stdout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from deploykit.errors import ConfigError
from deploykit.pg import PgSettings
from deploykit.shell import quote

__all__ = ["READ_PASSWORD", "Access", "AccessKind", "program_path"]

AccessKind = Literal["socket", "tcp", "docker"]
READ_PASSWORD = "IFS= read -r PGPASSWORD || exit 3\nexport PGPASSWORD\n"
"""Script lines reading the password (first stdin line) into ``PGPASSWORD``."""


def program_path(bin_dir: str | None, name: str) -> str:
    """``name`` (quoted), in ``bin_dir`` when given."""
    return quote(f"{bin_dir.rstrip('/')}/{name}" if bin_dir else name)


@dataclass(frozen=True)
class Access:
    """One way to run PostgreSQL client programs on the db host."""

    kind: AccessKind = "socket"
    os_user: str = "postgres"
    container: str | None = None
    bin_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("socket", "tcp", "docker"):
            raise ConfigError(f"postgres access must be socket, tcp or docker, not "
                              f"{self.kind!r}")
        if self.kind == "docker" and not self.container:
            raise ConfigError("postgres access docker needs a container name "
                              "(postgres_container)")

    @classmethod
    def socket(cls, os_user: str = "postgres", *, bin_dir: str | None = None) -> Access:
        """As OS user ``os_user`` (``runuser``) over the Unix socket: peer
        authentication, no password travels."""
        return cls("socket", os_user=os_user, bin_dir=bin_dir)

    @classmethod
    def tcp(cls, *, bin_dir: str | None = None) -> Access:
        """Over TCP to the settings' ``server_host:port`` as their user, with their
        password (required)."""
        return cls("tcp", bin_dir=bin_dir)

    @classmethod
    def docker(cls, container: str, *, os_user: str = "postgres") -> Access:
        """``docker exec -i`` into ``container`` as ``os_user``, over the container's
        own socket (with the password in ``PGPASSWORD`` when the settings have one)."""
        return cls("docker", os_user=os_user, container=container)

    @classmethod
    def from_settings(cls, settings: PgSettings, *, os_user: str | None = "postgres",
                      bin_dir: str | None = None) -> Access:
        """The access the host's vars name (``postgres_access``); without one, the
        legacy ``os_user`` choice: a name is :meth:`socket`, None is :meth:`tcp`."""
        kind = settings.access
        if kind is None:
            return cls.socket(os_user, bin_dir=bin_dir) if os_user else cls.tcp(bin_dir=bin_dir)
        user = settings.os_user or "postgres"
        if kind == "docker":
            return cls.docker(settings.container or "", os_user=user)
        return cls(kind, os_user=user, bin_dir=bin_dir)  # type: ignore[arg-type]

    def command(self, settings: PgSettings, program: str) -> tuple[str, bytes | None]:
        """The command prefix running ``program`` (with user, port, ``--no-password``),
        and the stdin the script needs (the password line) or None."""
        args = f"--username={quote(settings.user)} --port={int(settings.port)} --no-password"
        if self.kind == "socket":
            return (f"runuser -u {quote(self.os_user)} -- {program_path(self.bin_dir, program)}"
                    f" {args}", None)
        stdin = self._password_line(settings, required=self.kind == "tcp")
        if self.kind == "tcp":
            return (f"{program_path(self.bin_dir, program)} "
                    f"--host={quote(settings.server_host)} {args}", stdin)
        env = "-e PGPASSWORD " if stdin is not None else ""
        return (f"docker exec -i {env}-u {quote(self.os_user)} {quote(str(self.container))} "
                f"{quote(program)} {args}", stdin)

    def reader(self, program: str = "pg_restore") -> str:
        """The command reading a dump file given on stdin, without a server (``pg_restore
        --list``): on the host, or in the container."""
        if self.kind == "docker":
            return f"docker exec -i {quote(str(self.container))} {quote(program)}"
        return program_path(self.bin_dir, program)

    @staticmethod
    def _password_line(settings: PgSettings, *, required: bool) -> bytes | None:
        if settings.password is None:
            if required:
                raise ConfigError("postgres access over TCP needs a password: set "
                                  "postgres_password or postgres_password_file for the host")
            return None
        if "\n" in settings.password.reveal():
            raise ConfigError("a password with a newline cannot be passed to pg_dump/pg_restore")
        return settings.password.reveal().encode() + b"\n"

    def describe(self) -> str:
        """``socket as postgres``, ``tcp``, ``docker exec into db as postgres``."""
        if self.kind == "docker":
            return f"docker exec into {self.container} as {self.os_user}"
        return f"socket as {self.os_user}" if self.kind == "socket" else "tcp"
