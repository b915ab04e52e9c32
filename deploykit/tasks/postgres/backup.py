"""Backups: :func:`backup`, :func:`verify_backup`, :func:`latest_backup`."""

from __future__ import annotations

import datetime
import math
from typing import Any

from deploykit import humanize
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.facts import format_mode
from deploykit.pg import PgSettings
from deploykit.shell import quote
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks import retention
from deploykit.tasks.postgres.access import Access
from deploykit.tasks.postgres.dumps import (
    DumpFacts,
    FileTask,
    backup_dir,
    backup_path,
    parse_dump,
    verify_script,
)
from deploykit.tasks.postgres.session import SCOPE_KEY, describe_server


class BackupTask(FileTask):
    """A verified pg_dump of a database for a deploy id. See :func:`backup`."""

    kind = "postgres.backup"

    def __init__(self, db: str, *, app: str, deploy_id: str, directory: str | None = None,
                 keep_last: int | None = None, keep_days: float | None = None,
                 space_factor: float = 1.0, compress: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if compress is not None and not 0 <= compress <= 9:
            raise ConfigError(f"compress must be 0 to 9, not {compress!r}")
        self.compress = compress
        self.db = db
        self.path = backup_path(app, db, deploy_id, directory=directory)
        self.directory = self.path.rsplit("/", 1)[0]
        self.deploy_id = deploy_id
        self.app = app
        if keep_last is not None and keep_last < 1:
            raise ConfigError("keep_last must be at least 1 (the new backup is always kept)")
        if keep_days is not None and keep_days < 0:
            raise ConfigError("keep_days must not be negative")
        if space_factor < 0:
            raise ConfigError("space_factor must not be negative")
        self.keep_last = keep_last
        self.keep_days = keep_days
        self.space_factor = space_factor

    def target(self) -> str:
        return f"{self.db} -> {self.path}"

    def probe_script(self) -> str:
        d = quote(self.directory)
        return "\n".join([
            "echo \"now $(date +%s)\"",
            verify_script(quote(self.path), reader=self.reader),
            f'dk_p={d}; while [ ! -e "$dk_p" ]; do dk_p=$(dirname -- "$dk_p"); done',
            "printf 'space %s\\n' \"$(stat -f -c '%a %S' -- \"$dk_p\")\"",
            retention.listing_script(self.directory, self.db),
            *([] if self.keep_last is None and self.keep_days is None
              else [retention.history_script(self.app)]),
        ])

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        dump = facts["dump"] = parse_dump(f["lines"], self.path)
        plan = Plan()
        problems = dump.problems()
        if not dump.exists:
            plan.add("backup", None, f"{self.path} (pg_dump -Fc of {self.db})")
        elif problems:
            plan.add("backup", f"{self.path} {'; '.join(problems)}", f"{self.path} (new dump)")
        elif dump.mode != 0o600:
            plan.add("mode", format_mode(dump.mode), "0600")
        if plan.has("backup"):
            self.client(conn, "pg_dump")  # a configuration error shows before anything else
            self.check_space(conn, facts)
        else:
            self.scope(facts).data.update(database=self.db, deploy_id=self.deploy_id,
                                          **dump.summary(f["now"]))
        base = self.path.rsplit("/", 1)[-1]
        files = retention.parse_listing(f["lines"])
        if not any(b.name == base for b in files):  # the new one: newest, and verified
            files.append(retention.BackupFile(
                base, max([f["now"], *(b.mtime for b in files)]) + 0.001, 0, True))
        rule = retention.plan(files, retention.parse_history_lines(f["lines"]), db=self.db,
                              keep_last=self.keep_last, keep_days=self.keep_days,
                              now=f["now"], protect=[base])
        prune = facts["prune"] = rule.delete
        if self.keep_last is not None or self.keep_days is not None:
            self.scope(facts).data["kept"] = rule.keep
        if prune:
            plan.add("remove", ", ".join(prune), None)
        return plan

    def check_space(self, conn: Connection, facts: Facts) -> None:
        """Refuse (TaskError) when the database is missing or the free space in the
        backup directory is below ``pg_database_size * space_factor``."""
        settings = self.settings_for(conn)
        size = self.scope(facts).sql("postgres").value(
            "SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", [self.db])
        if size is None:
            raise self.error(conn, f"database {self.db!r} does not exist "
                                   f"({describe_server(conn, settings)})")
        space = facts["values"].get("space", "").split()
        try:
            free = int(space[0]) * int(space[1])
        except (IndexError, ValueError):
            raise self.error(conn, f"cannot read the free space of {self.directory} on host "
                                   f"{conn.name}: {' '.join(space)!r}") from None
        need = math.ceil(int(size) * self.space_factor)
        if free < need:
            raise self.error(conn, f"not enough free space for a backup of database "
                                   f"{self.db!r} in {self.directory} on host {conn.name}: "
                                   f"{humanize.size(free)} free, about "
                                   f"{humanize.size(need)} needed "
                                   f"(pg_database_size {humanize.size(int(size))} x "
                                   f"{self.space_factor:g}); nothing was written")

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        p = quote(self.path)
        lines: list[str] = []
        stdin = None
        if plan.has("backup"):
            dump, stdin = self.client(conn, "pg_dump")
            lines += [
                "umask 077",
                f"mkdir -p -- {quote(self.directory)}",
                f"dk_tmp=$(mktemp -- {quote(self.directory + '/.dk-backup.XXXXXX')})",
                "trap 'rm -f -- \"$dk_tmp\" \"$dk_tmp.sha256\"' EXIT",
                f"{dump} --format=custom"
                + (f" --compress={self.compress}" if self.compress is not None else "")
                + f' --dbname={quote(self.db)} > "$dk_tmp"',
                f'{self.access_for(conn).reader()} --list < "$dk_tmp" > /dev/null',
                'dk_sum=$(sha256sum < "$dk_tmp" | cut -c1-64)',
                f"printf '%s  %s\\n' \"$dk_sum\" {quote(self.path.rsplit('/', 1)[-1])} "
                '> "$dk_tmp.sha256"',
                'chmod 600 -- "$dk_tmp" "$dk_tmp.sha256"',
                f'mv -f -- "$dk_tmp" {p}',
                f'mv -f -- "$dk_tmp.sha256" {quote(self.path + ".sha256")}',
                "trap - EXIT",
            ]
            facts["wrote"] = True
        elif plan.has("mode"):
            lines.append(f"chmod 600 -- {p}")
        for name in facts["prune"]:
            old = f"{self.directory}/{name}"
            lines.append(f"rm -f -- {quote(old)} {quote(old + '.sha256')}")
        self.script(conn, stdin, lines,
                    f"backup of database {self.db!r} to {self.path} on host {conn.name} "
                    f"failed (no partial file kept)")

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        fresh = self.probe(conn)
        fresh[SCOPE_KEY] = facts[SCOPE_KEY]
        dump = parse_dump(fresh["lines"], self.path)
        problems = dump.problems()
        if facts.get("wrote") and problems:
            conn.run(["rm", "-f", "--", self.path, self.path + ".sha256"], task=self.name)
            raise self.error(conn, f"the backup {self.path} on host {conn.name} failed "
                                   f"verification after writing ({'; '.join(problems)}); "
                                   f"it was removed")
        return self.plan(conn, fresh)


def backup(db: str, *, app: str, deploy_id: str, directory: str | None = None,
           keep_last: int | None = None, keep_days: float | None = None,
           space_factor: float = 1.0, compress: int | None = None,
           os_user: str | None = "postgres", bin_dir: str | None = None,
           access: Access | None = None, timeout: float | None = None,
           settings: PgSettings | None = None, name: str | None = None) -> BackupTask:
    """Back database ``db`` up with ``pg_dump --format=custom`` on the database host.

    The dump goes to ``/var/backups/<app>/<db>-<deploy_id>.dump`` (directory
    created 0700), mode 0600, with a ``.sha256`` sidecar in ``sha256sum``
    format. It is written to a temporary name, read back with
    ``pg_restore --list``, checksummed, then moved into place; afterwards the
    re-probe verifies the final file (listing and checksum) and removes it if
    that fails. On any failure the partial file is removed.

    Args:
        app: names the directory under /var/backups (``directory`` overrides it).
        deploy_id: names the backup; a verified backup for it is ``ok`` (not
            redone); a corrupt one is replaced.
        keep_last, keep_days: retention over ``<db>-*.dump`` in the directory:
            a backup is kept when it is among the ``keep_last`` newest *or*
            younger than ``keep_days``; the others (and their sidecars) are
            removed after a successful backup. No rule: nothing is removed.
        space_factor: refuse, before starting, when the free space is below
            ``pg_database_size(db) * space_factor`` (a dump is usually smaller:
            no indexes, compressed; 0 disables the check).
        compress: pg_dump's compression level, 0 to 9 (default: pg_dump's, 6);
            1 dumps much faster for a somewhat larger file.
        os_user: run pg_dump as this OS user over the Unix socket (peer
            authentication); None: over TCP as the settings' user, with the
            password passed on stdin.
        bin_dir: where pg_dump and pg_restore are (default: the PATH).
        access: how pg_dump reaches the server (:class:`~.access.Access`: the OS
            user over the socket, TCP with a password, or ``docker exec`` into a
            container); default: the host's ``postgres_access``, else ``os_user``.
        timeout: seconds the dump may take (default: the connection's).

    A missing database, a refused login or too little space fail before
    anything is written, each with one message naming the database and host.
    ``Result.data``: ``path``, ``size``, ``sha256``, ``age``, ``deploy_id``.
    No undo: a backup is kept when a deploy is rolled back.
    """
    return BackupTask(db, app=app, deploy_id=deploy_id, directory=directory,
                      keep_last=keep_last, keep_days=keep_days, space_factor=space_factor,
                      compress=compress, os_user=os_user, bin_dir=bin_dir, access=access,
                      timeout=timeout,
                      settings=settings, name=name)


class _VerifyTask(FileTask):
    """Check a dump file: it exists, is listed by pg_restore, matches its checksum, and
    is young enough."""

    def __init__(self, *, max_age: float | datetime.timedelta | None = None,
                 require_checksum: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_age = (max_age.total_seconds() if isinstance(max_age, datetime.timedelta)
                        else max_age)
        self.require_checksum = require_checksum

    def judge(self, conn: Connection, facts: Facts, dump: DumpFacts) -> Plan:
        """Empty plan when the dump passes; TaskError naming the problems otherwise."""
        problems = dump.problems(require_checksum=self.require_checksum)
        now = facts["now"]
        if dump.exists:
            self.scope(facts).data.update(dump.summary(now))
            if self.max_age is not None and now - dump.mtime > self.max_age:
                problems.append(f"is {humanize.age(now - dump.mtime)} old, older than "
                                f"{humanize.age(self.max_age)}")
        if problems:
            raise self.error(conn, f"backup {dump.path} on host {conn.name} "
                                   f"{'; '.join(problems)}")
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "a check never changes the host")  # pragma: no cover


class VerifyBackupTask(_VerifyTask):
    """See :func:`verify_backup`."""

    kind = "postgres.verify_backup"

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not path.startswith("/") or "\0" in path:
            raise ConfigError(f"backup path must be absolute, got {path!r}")
        self.path = path

    def target(self) -> str:
        return self.path

    def probe_script(self) -> str:
        return "echo \"now $(date +%s)\"\n" + verify_script(quote(self.path), reader=self.reader)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        return self.judge(conn, facts, parse_dump(f["lines"], self.path))


def verify_backup(path: str, *, max_age: float | datetime.timedelta | None = None,
                  require_checksum: bool = True, bin_dir: str | None = None,
                  name: str | None = None) -> VerifyBackupTask:
    """Check the dump at ``path`` on the host: it exists, ``pg_restore --list`` reads
    it, its ``.sha256`` sidecar matches (unless ``require_checksum=False`` and there is
    none), and it is at most ``max_age`` (seconds or a timedelta) old.

    A pre-flight check: ``ok`` (``Result.data``: path, size, sha256, age) or
    ``failed`` with every problem named; never changes anything.
    """
    return VerifyBackupTask(path, max_age=max_age, require_checksum=require_checksum,
                            bin_dir=bin_dir, name=name)


class LatestBackupTask(_VerifyTask):
    """See :func:`latest_backup`."""

    kind = "postgres.latest_backup"

    def __init__(self, db: str, *, app: str, directory: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backup_path(app, db, "x", directory=directory)  # validates the names
        self.db = db
        self.directory = backup_dir(app, directory)

    def target(self) -> str:
        return f"{self.db} in {self.directory}"

    def probe_script(self) -> str:
        return "\n".join([
            "echo \"now $(date +%s)\"",
            f"dk_f=$(find {quote(self.directory)} -maxdepth 1 -type f "
            f"-name {quote(self.db + '-*.dump')} -printf '%T@ %p\\n' 2>/dev/null "
            "| sort -n | tail -n 1 | cut -d' ' -f2-)",
            'if [ -n "$dk_f" ]; then printf \'path %s\\n\' "$dk_f"',
            verify_script('"$dk_f"', reader=self.reader),
            "else echo 'path -'; fi",
        ])

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        path = f["values"].get("path", "-")
        if path == "-":
            raise self.error(conn, f"no backup of database {self.db!r} in {self.directory} "
                                   f"on host {conn.name}")
        deploy_id = path.rsplit("/", 1)[-1][len(self.db) + 1:].removesuffix(".dump")
        self.scope(facts).data.update(database=self.db, deploy_id=deploy_id)
        return self.judge(conn, facts, parse_dump(f["lines"], path))


def latest_backup(db: str, *, app: str, directory: str | None = None,
                  max_age: float | datetime.timedelta | None = None,
                  require_checksum: bool = True, bin_dir: str | None = None,
                  name: str | None = None) -> LatestBackupTask:
    """Check that the newest backup of ``db`` in ``/var/backups/<app>`` exists, is
    intact (listing and checksum, as :func:`verify_backup`) and at most ``max_age`` old.

    ``Result.data`` names it (``path``, ``deploy_id``, ``size``, ``sha256``,
    ``age``), e.g. to feed :func:`restore`. ``failed`` when there is none or it
    does not pass; never changes anything.
    """
    return LatestBackupTask(db, app=app, directory=directory, max_age=max_age,
                            require_checksum=require_checksum, bin_dir=bin_dir, name=name)
