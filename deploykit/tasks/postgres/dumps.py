"""Dump files on the database host: where they go, how a dump is verified, and the
client programs (pg_dump, pg_restore) run there."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.pg import PgSettings
from deploykit.task import Facts
from deploykit.tasks.postgres.access import READ_PASSWORD, Access, program_path
from deploykit.tasks.postgres.session import PgTask

BACKUP_ROOT = "/var/backups"
"""Backups go to ``BACKUP_ROOT/<app>/`` unless a task says otherwise."""
BACKUP_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,37}")
FILE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def backup_path(app: str, db: str, deploy_id: str, *, directory: str | None = None) -> str:
    """Where :func:`backup` puts database ``db``'s dump for ``deploy_id``:
    ``/var/backups/<app>/<db>-<deploy_id>.dump`` (or in ``directory``)."""
    if not BACKUP_DB_NAME.fullmatch(db):
        raise ConfigError(f"database name {db!r}: backups and restores take names of "
                          f"letters, digits and '_' (1 to 38, not starting with a digit)")
    if not FILE_PART.fullmatch(deploy_id):
        raise ConfigError(f"deploy id {deploy_id!r}: letters, digits, '.', '_' and '-' only")
    return f"{backup_dir(app, directory)}/{db}-{deploy_id}.dump"


def backup_dir(app: str, directory: str | None) -> str:
    if directory is not None:
        if not directory.startswith("/") or "\0" in directory:
            raise ConfigError(f"backup directory must be an absolute path, got {directory!r}")
        return directory.rstrip("/") or "/"
    if not FILE_PART.fullmatch(app):
        raise ConfigError(f"app name {app!r}: letters, digits, '.', '_' and '-' only")
    return f"{BACKUP_ROOT}/{app}"




def verify_script(path_expr: str, bin_dir: str | None = None, *,
                  reader: str | None = None) -> str:
    """A snippet printing :class:`DumpFacts` lines for the dump at ``path_expr`` (a shell
    word: a quoted path or ``"$var"``): size, mtime and mode, the sidecar's line, the
    actual SHA-256, and whether ``pg_restore --list`` reads it. Never fails."""
    restore = reader or program_path(bin_dir, "pg_restore")
    return (
        f"dk_dump={path_expr}\n"
        'if [ -f "$dk_dump" ]; then\n'
        "  printf 'file %s\\n' \"$(stat -c '%s %Y %a' -- \"$dk_dump\")\"\n"
        '  if [ -f "$dk_dump.sha256" ]; then '
        "printf 'sidecar %s\\n' \"$(head -c 1000 -- \"$dk_dump.sha256\" | head -n 1)\"; "
        "else echo 'sidecar -'; fi\n"
        "  printf 'actual %s\\n' \"$(sha256sum < \"$dk_dump\" | cut -c1-64)\"\n"
        f'  if dk_err=$({restore} --list < "$dk_dump" 2>&1 >/dev/null); '
        "then echo 'list ok'; "
        "else printf 'list fail %s\\n' \"$(printf '%s' \"$dk_err\" | tr '\\n' ' ' | "
        "cut -c1-300)\"; fi\n"
        "else echo 'file -'; fi"
    )


@dataclass(frozen=True)
class DumpFacts:
    """What :func:`verify_script` found about a dump file."""

    path: str
    exists: bool
    size: int = 0
    mtime: float = 0.0
    mode: int = 0
    sidecar: str | None = None
    actual: str | None = None
    list_error: str | None = None

    @property
    def recorded(self) -> str | None:
        """The SHA-256 the sidecar records for this file, when it is well formed."""
        match = re.fullmatch(r"([0-9a-f]{64})[ \t][ *]?(.+)", self.sidecar or "")
        if match is None or match[2] != self.path.rsplit("/", 1)[-1]:
            return None
        return match[1]

    def problems(self, *, require_checksum: bool = True) -> list[str]:
        """Why the file is not a verified dump (empty: it is)."""
        if not self.exists:
            return ["does not exist"]
        found = []
        if self.list_error is not None:
            found.append(f"is not a pg_dump custom-format archive ({self.list_error})")
        if self.sidecar is None:
            if require_checksum:
                found.append(f"has no checksum file {self.path}.sha256")
        elif self.recorded is None:
            found.append(f"its checksum file {self.path}.sha256 is not a sha256sum line "
                         f"for {self.path.rsplit('/', 1)[-1]}")
        elif self.recorded != self.actual:
            found.append(f"checksum mismatch: {self.path}.sha256 records "
                         f"{self.recorded[:12]}..., the file has {(self.actual or '')[:12]}...")
        return found

    def summary(self, now: float) -> dict[str, Any]:
        """The file as JSON data for Result.data."""
        return {"path": self.path, "size": self.size, "sha256": self.actual,
                "age": round(max(0.0, now - self.mtime), 1)}


def parse_dump(lines: Iterable[str], path: str) -> DumpFacts:
    """Parse the lines :func:`verify_script` printed (other lines are ignored)."""
    found: dict[str, str] = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        if key in ("file", "sidecar", "actual", "list") and key not in found:
            found[key] = rest
    if found.get("file", "-") == "-":
        return DumpFacts(path, False)
    try:
        size, mtime, mode = found["file"].split()
        listed = found.get("list", "fail (no answer)")
        return DumpFacts(
            path, True, int(size), float(mtime), int(mode, 8),
            sidecar=None if found.get("sidecar", "-") == "-" else found["sidecar"],
            actual=found.get("actual") or None,
            list_error=None if listed == "ok" else listed.removeprefix("fail ").strip())
    except (KeyError, ValueError):
        raise TaskError(f"unexpected dump probe output for {path}: {found!r}") from None



def tail(text: str, lines: int = 4) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


class FileTask(PgTask):
    """A task whose shell probe looks at dump files; parses ``key value`` lines."""

    shell_probe = True

    def __init__(self, *, bin_dir: str | None = None, os_user: str | None = "postgres",
                 access: Access | None = None, timeout: float | None = None,
                 settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.bin_dir = bin_dir
        self.os_user = os_user
        self.access = access
        self.timeout = timeout

    def access_for(self, conn: Connection) -> Access:
        """The given access, else the host's ``postgres_access``, else ``os_user``'s."""
        if self.access is not None:
            return self.access
        return Access.from_settings(self.settings_for(conn), os_user=self.os_user,
                                    bin_dir=self.bin_dir)

    @property
    def reader(self) -> str:
        """The command reading a dump on stdin (``pg_restore``), for probes: in the
        container with an explicit docker access, else on the host."""
        return (self.access or Access.socket(bin_dir=self.bin_dir)).reader()

    def client(self, conn: Connection, program: str) -> tuple[str, bytes | None]:
        """The command prefix and stdin for ``program`` (:meth:`Access.command`); a
        ConfigError becomes this task's error."""
        try:
            return self.access_for(conn).command(self.settings_for(conn), program)
        except ConfigError as exc:
            raise self.error(conn, exc.message) from None

    def script(self, conn: Connection, stdin: bytes | None, lines: Sequence[str],
               failure: str) -> None:
        """Run a ``set -e`` script from ``/`` (a client run as another OS user cannot
        enter the login user's home); on failure raise ``failure: <stderr tail>``."""
        text = ((READ_PASSWORD if stdin is not None else "") + "set -e\ncd /\n"
                + "\n".join(lines))
        result = conn.run(text, stdin=stdin, check=False, timeout=self.timeout, task=self.name)
        if result.failed:
            raise self.error(conn, f"{failure}: {tail(result.stderr or result.stdout)}")

    def parse(self, output: str) -> Facts:
        lines = output.splitlines()
        values: dict[str, str] = {}
        for line in lines:
            key, _, rest = line.partition(" ")
            values.setdefault(key, rest)
        try:
            now = float(values.get("now", ""))
        except ValueError:
            now = time.time()
        return {"shell": True, "lines": lines, "values": values, "now": now}
