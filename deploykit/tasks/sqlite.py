"""SQLite tasks: online backup per deploy, integrity check, restore with the old copy kept.

::

    from deploykit.tasks import sqlite

    sqlite.backup("/srv/app/data/app.db", deploy_id)        # before migrating
    sqlite.integrity_check("/srv/app/data/app.db")
    sqlite.restore("/srv/app/data/app.db", deploy_id)       # when the deploy went wrong

The work is done on the host by a small Python program (:data:`HELPER`, run
with ``python3 -c``; only the standard library's :mod:`sqlite3`), so the
database never travels:

* **backup** uses SQLite's online backup API (``sqlite3.Connection.backup``):
  a consistent copy while the app keeps running. The copy must pass ``PRAGMA
  integrity_check``; it gets a ``.sha256`` sidecar (``sha256sum -c`` format),
  both mode 0600, written under temporary names and renamed into place (a
  backup without its matching sidecar is never taken as done). One backup per
  deploy id: ``<backup_dir>/<db name>.<deploy id>.bak``.
* **restore** checks the backup against its sidecar, copies it to a temporary
  file beside the database and checks that copy's integrity, keeps the current
  content as ``<db>.old-<timestamp>``, then writes the backup's pages *into* the
  database with the online backup API: the same file, so a running app keeps
  its connections and reads the restored data at its next query (no restart).
  Undo writes the kept content back the same way.

Every probe is read-only (databases are opened with ``mode=ro``; like any SQLite
reader, opening a WAL-mode database creates its ``-wal``/``-shm`` files when
they are missing); every path is quoted with :func:`deploykit.shell.quote`.
"""

from __future__ import annotations

import posixpath
import re
import time
from typing import ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, RollbackError, TaskError
from deploykit.facts import (
    PathFacts,
    content_script,
    format_mode,
    parse_content,
    parse_path,
    path_script,
)
from deploykit.result import Result
from deploykit.shell import join
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "BACKUP_DIR",
    "HELPER",
    "BackupTask",
    "CleanupBackupsTask",
    "CompareCountsTask",
    "IntegrityTask",
    "ListBackupsTask",
    "RestoreTask",
    "SnapshotCountsTask",
    "backup",
    "backup_path",
    "cleanup_backups",
    "compare_counts",
    "integrity_check",
    "list_backups",
    "restore",
    "snapshot_counts",
]

BACKUP_DIR = "/var/backups/deploykit/sqlite"
"""Where backups go unless told otherwise (created 0700)."""
BACKUP_MODE = 0o600
SIDECAR_LIMIT = 4096
_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

HELPER = r'''
import hashlib, os, shutil, sqlite3, sys, urllib.parse

SIDE = ("-wal", "-shm", "-journal")

def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(3)

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

def readonly(path):
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True)

def integrity(path, private=False):
    """'ok' or the first problems. private: a file of ours, whose -wal/-shm we remove."""
    try:
        con = readonly(path)
        try:
            rows = [r[0] for r in con.execute("PRAGMA integrity_check(20)")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        rows = [str(exc)]
    if private:
        for s in SIDE:
            if os.path.exists(path + s):
                os.unlink(path + s)
    return "ok" if rows == ["ok"] else "; ".join(rows)

def sync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def temp(directory, tag):
    return os.path.join(directory, ".dk-sqlite-%s-%s" % (tag, os.urandom(4).hex()))

def cleanup(path):
    for p in (path, path + ".sha256") + tuple(path + s for s in SIDE):
        if os.path.lexists(p):
            os.unlink(p)

def backup(db, dest):
    os.umask(0o077)
    directory = os.path.dirname(dest)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = temp(directory, "backup")
    try:
        src, dst = readonly(db), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        verdict = integrity(tmp, private=True)
        if verdict != "ok":
            fail("the copy of %s fails PRAGMA integrity_check: %s" % (db, verdict))
        with open(tmp + ".sha256", "w") as f:
            f.write("%s  %s\n" % (sha256(tmp), os.path.basename(dest)))
        for p in (tmp, tmp + ".sha256"):
            os.chmod(p, 0o600)
            sync(p)
        os.replace(tmp, dest)
        os.replace(tmp + ".sha256", dest + ".sha256")
        sync(directory)
    finally:
        cleanup(tmp)

def online_copy(src_path, dst_path, readonly_source=True):
    """Copy a database page by page with the online backup API into dst_path (created
    or overwritten in place: connections open on it see the new content)."""
    src = readonly(src_path) if readonly_source else sqlite3.connect(src_path)
    try:
        dst = sqlite3.connect(dst_path, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()

def keep_old(db, old):
    """The current content of db, kept as old: an online copy; the raw bytes (with the
    -wal/-shm/-journal files) when the database cannot be copied cleanly."""
    if os.path.lexists(old):
        fail("%s already exists; not overwriting it" % old)
    st = os.stat(db)
    try:
        online_copy(db, old)
        if integrity(old, private=True) != "ok":
            raise sqlite3.DatabaseError("the copy fails PRAGMA integrity_check")
    except sqlite3.Error:
        cleanup(old)
        shutil.copyfile(db, old)
        for s in SIDE:
            if os.path.exists(db + s):
                shutil.copyfile(db + s, old + s)
    os.chown(old, st.st_uid, st.st_gid)
    os.chmod(old, st.st_mode & 0o7777)
    sync(old)

def into_place(db, tmp):
    """tmp's content into db, in place; a live file that cannot take it (damaged) is
    replaced instead (then readers must reopen it). Prints which."""
    try:
        online_copy(tmp, db, readonly_source=False)
        print("mode in place")
    except sqlite3.Error as exc:
        st = os.stat(db)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        for s in SIDE:
            if os.path.lexists(db + s):
                os.unlink(db + s)
        os.replace(tmp, db)
        print("mode file replaced (the live database could not be written in place: %s)"
              % exc)

def restore(db, source, old):
    with open(source + ".sha256") as f:
        expected = f.read(64)
    if sha256(source) != expected:
        fail("backup %s does not match its checksum file %s.sha256" % (source, source))
    directory = os.path.dirname(db)
    tmp = temp(directory, "restore")
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o600)
        verdict = integrity(tmp, private=True)
        if verdict != "ok":
            fail("backup %s fails PRAGMA integrity_check: %s" % (source, verdict))
        sync(tmp)
        if os.path.exists(db):
            keep_old(db, old)
            into_place(db, tmp)
        else:
            os.replace(tmp, db)
            print("mode new file")
        sync(directory)
    finally:
        cleanup(tmp)

def putback(db, old, existed):
    if os.path.lexists(old):
        if os.path.exists(db):
            into_place(db, old)
        else:
            os.replace(old, db)
        cleanup(old)
    elif existed == "0" and os.path.lexists(db):
        for p in (db,) + tuple(db + s for s in SIDE):
            if os.path.lexists(p):
                os.unlink(p)
    sync(os.path.dirname(db))

def content(path, immutable=False):
    """sha256 of the database's logical content (its SQL dump), or absent/unreadable.
    immutable: a file nobody writes (a backup): opened without -wal/-shm files."""
    if not os.path.isfile(path):
        return "absent"
    try:
        con = sqlite3.connect("file:" + urllib.parse.quote(os.path.abspath(path))
                              + "?mode=ro&immutable=1", uri=True) if immutable else readonly(path)
        try:
            digest = hashlib.sha256()
            for line in con.iterdump():
                digest.update(line.encode() + b"\n")
            return digest.hexdigest()
        finally:
            con.close()
    except sqlite3.Error:
        return "unreadable"

def digest(db, source):
    print("live " + content(db))
    print("backup " + content(source, immutable=True))

def check(db):
    print("integrity " + (integrity(db) if os.path.isfile(db) else "absent"))

action, args = sys.argv[1], sys.argv[2:]
try:
    {"backup": backup, "restore": restore, "putback": putback, "check": check,
     "digest": digest}[action](*args)
except (OSError, sqlite3.Error) as exc:
    fail("%s: %s" % (action, exc))
'''
"""The host-side program: ``python3 -c HELPER ACTION ARGS...``."""


def _helper(action: str, *args: str) -> str:
    """The shell command running :data:`HELPER` ``action`` with quoted ``args``."""
    return join(["python3", "-c", HELPER, action, *args])


def _absolute(path: str, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path \
            or path.endswith("/"):
        raise ConfigError(f"{what} must be an absolute file path, not {path!r}")
    return posixpath.normpath(path)


def _check_deploy_id(deploy_id: str) -> str:
    if not isinstance(deploy_id, str) or not _DEPLOY_ID.fullmatch(deploy_id):
        raise ConfigError(f"invalid deploy id {deploy_id!r}: use 1-128 letters, digits, "
                          f"'.', '_' or '-'")
    return deploy_id


def backup_path(db: str, deploy_id: str, backup_dir: str = BACKUP_DIR) -> str:
    """Where :func:`backup` puts the backup of ``db`` for ``deploy_id``."""
    name = posixpath.basename(_absolute(db, "database"))
    directory = _absolute(backup_dir, "backup_dir")
    return f"{directory}/{name}.{_check_deploy_id(deploy_id)}.bak"


def _sections(output: str) -> dict[str, str]:
    """Split probe output printed as ``== name`` headers followed by their lines."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def _section_script(**scripts: str) -> str:
    return "\n".join(f"echo '== {name}'; {script}" for name, script in scripts.items())


def _sidecar_digest(output: str) -> str | None:
    """The hex digest a sidecar's content (``content <base64>``) starts with, if any."""
    data = parse_content(output)
    text = (data or b"")[:64].decode("ascii", "replace")
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


class SqliteTask(Task):
    """A task on one SQLite database file on the host."""

    def __init__(self, db: str, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.db = _absolute(db, "database")

    def target(self) -> str:
        return self.db

    def error(self, conn: Connection, message: str) -> TaskError:
        """A TaskError on this task's host."""
        return TaskError(message, host=conn.name, task=self.name)

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """As :meth:`Task.run`; what the task put in ``facts["data"]`` goes to
        ``Result.data``."""
        current = facts if facts is not None else self.probe(conn)
        result = super().run(conn, check=check, facts=current, undo=undo)
        result.data.update(current.get("data", {}))
        return result


# -- backup ---------------------------------------------------------------------------


class BackupTask(SqliteTask):
    """A verified backup of the database exists for a deploy id. See :func:`backup`."""

    kind: ClassVar[str] = "sqlite.backup"

    def __init__(self, db: str, deploy_id: str, *, backup_dir: str = BACKUP_DIR,
                 name: str | None = None) -> None:
        super().__init__(db, name=name)
        self.path = backup_path(self.db, deploy_id, backup_dir)
        self.deploy_id = deploy_id

    def probe_script(self) -> str:
        return _section_script(db=path_script(self.db, checksum=False),
                               backup=path_script(self.path),
                               sidecar=content_script(self.path + ".sha256", limit=SIDECAR_LIMIT))

    def parse(self, output: str) -> Facts:
        parts = _sections(output)
        return {"db": parse_path(parts.get("db", "")),
                "backup": parse_path(parts.get("backup", "")),
                "sidecar": _sidecar_digest(parts.get("sidecar", ""))}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        db: PathFacts = facts["db"]
        if db.type != "file":
            raise self.error(conn, f"database {self.db} does not exist" if not db.exists
                             else f"database {self.db} is a {db.type}, not a file")
        plan = Plan()
        current: PathFacts = facts["backup"]
        if not current.exists:
            plan.add("backup", None, self.path)
        elif current.type != "file" or facts["sidecar"] != current.sha256:
            plan.add("backup", f"{self.path} (does not match its .sha256)", self.path)
        elif current.mode != BACKUP_MODE:
            plan.add("mode", format_mode(current.mode), format_mode(BACKUP_MODE))
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        # No undo: a backup harms nothing, and a failed deploy is when it is wanted.
        if plan.has("backup"):
            conn.run(_helper("backup", self.db, self.path), task=self.name)
        else:
            conn.run(join(["chmod", "600", "--", self.path, self.path + ".sha256"]),
                     task=self.name)


def backup(db: str, deploy_id: str, *, backup_dir: str = BACKUP_DIR) -> BackupTask:
    """Back up the SQLite database ``db`` for deploy ``deploy_id``, once.

    Args:
        db: absolute path of the database on the host.
        deploy_id: the deploy this backup belongs to (letters, digits, ``._-``).
        backup_dir: where backups go (default :data:`BACKUP_DIR`, created 0700).

    The backup is ``<backup_dir>/<db name>.<deploy_id>.bak`` with a
    ``.sha256`` sidecar, both 0600, made with SQLite's online backup API on
    the host and integrity-checked before it is renamed into place (a corrupt
    database fails the task, naming the problem).

    Idempotent per deploy id: ``ok`` when the backup exists and matches its
    sidecar, even if the database changed since (it is *this deploy's* backup).
    A backup that does not match its sidecar is made again. Check mode: reports
    ``backup: (none) -> <path>``. No undo (a backup harms nothing).
    """
    return BackupTask(db, deploy_id, backup_dir=backup_dir)


# -- integrity check ------------------------------------------------------------------


class IntegrityTask(SqliteTask):
    """The database passes ``PRAGMA integrity_check``. See :func:`integrity_check`."""

    kind: ClassVar[str] = "sqlite.integrity_check"

    def probe_script(self) -> str:
        return _helper("check", self.db) + " 2>&1"

    def parse(self, output: str) -> Facts:
        for line in output.splitlines():
            if line.startswith("integrity "):
                return {"integrity": line[len("integrity "):]}
        raise TaskError(f"cannot check {self.db}: {output.strip()[-500:] or 'no output'}")

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        verdict = facts["integrity"]
        if verdict == "absent":
            raise self.error(conn, f"database {self.db} does not exist")
        if verdict != "ok":
            raise self.error(conn, f"database {self.db} fails PRAGMA integrity_check: "
                                   f"{verdict}")
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "an integrity check never changes anything")  # pragma: no cover


def integrity_check(db: str) -> IntegrityTask:
    """Check that the SQLite database ``db`` passes ``PRAGMA integrity_check``.

    A check: ``ok``, or **failed** naming the database and the first problems
    SQLite reports (up to 20). Read-only (the database is opened with
    ``mode=ro``). Never ``changed``.
    """
    return IntegrityTask(db)


# -- restore --------------------------------------------------------------------------


class RestoreTask(SqliteTask):
    """Restore a backup's content into the database, in place. See :func:`restore`."""

    kind: ClassVar[str] = "sqlite.restore"

    def __init__(self, db: str, source: str, *, if_changed: bool = False,
                 name: str | None = None) -> None:
        super().__init__(db, name=name)
        self.source = _absolute(source, "backup")
        self.if_changed = if_changed

    def probe_script(self) -> str:
        return _section_script(db=path_script(self.db), backup=path_script(self.source),
                               sidecar=content_script(self.source + ".sha256",
                                                      limit=SIDECAR_LIMIT),
                               content=_helper("digest", self.db, self.source))

    def parse(self, output: str) -> Facts:
        parts = _sections(output)
        content = dict(line.split(" ", 1) for line in parts.get("content", "").splitlines()
                       if " " in line)
        return {"db": parse_path(parts.get("db", "")),
                "backup": parse_path(parts.get("backup", "")),
                "sidecar": _sidecar_digest(parts.get("sidecar", "")),
                "content": content, "data": {}}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        db: PathFacts = facts["db"]
        source: PathFacts = facts["backup"]
        if source.type != "file":
            raise self.error(conn, f"backup {self.source} does not exist")
        if facts["sidecar"] is None:
            raise self.error(conn, f"backup {self.source} has no checksum file "
                                   f"{self.source}.sha256")
        if facts["sidecar"] != source.sha256:
            raise self.error(conn, f"backup {self.source} does not match its checksum file "
                                   f"{self.source}.sha256: not restoring it")
        if db.exists and db.type != "file":
            raise self.error(conn, f"database {self.db} is a {db.type}, not a file")
        live, wanted = facts["content"].get("live"), facts["content"].get("backup")
        same = live is not None and len(live) == 64 and live == wanted
        if same and (self.if_changed or facts.get("after_apply")):
            return Plan()
        before = None if not db.exists else (
            f"sha256 {(db.sha256 or '')[:12]}" + (" (the backup's content)" if same else ""))
        plan = Plan()
        plan.add("content", before, f"content of {self.source} (sha256 "
                                    f"{(source.sha256 or '')[:12]}), in place")
        return plan

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Re-probe: the database now holds the backup's content."""
        fresh = self.probe(conn)
        fresh["after_apply"] = True
        return self.plan(conn, fresh)

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        now = time.time()  # milliseconds too: two restores within a second keep both copies
        old = (f"{self.db}.old-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}"
               f"{int(now * 1000) % 1000:03d}Z")
        existed = facts["db"].exists
        command = _helper("putback", self.db, old, "1" if existed else "0")

        def put_back(c: Connection) -> None:
            result = c.run(command, check=False, task=f"undo {self.name}")
            if result.failed:
                raise RollbackError(f"could not put {old} back into {self.db}: "
                                    f"{result.stderr.strip()[-500:]}", host=c.name)

        undo.push(f"put the previous {self.db} back (from {old})" if existed
                  else f"remove the restored {self.db}", put_back)
        result = conn.run(_helper("restore", self.db, self.source, old), check=False,
                          task=self.name)
        if result.failed:
            raise self.error(conn, f"restore of {self.db} from {self.source} failed: "
                                   f"{result.stderr.strip()[-500:]}")
        mode = result.stdout.strip().rsplit("\n", 1)[-1].removeprefix("mode ")
        facts["data"].update(source=self.source, how=mode,
                             previous=old if existed else None)


def restore(db: str, deploy_id: str | None = None, *, source: str | None = None,
            backup_dir: str = BACKUP_DIR, if_changed: bool = False) -> RestoreTask:
    """Restore the SQLite database ``db`` from a backup, in place, keeping the current
    content beside it.

    Args:
        db: absolute path of the database on the host.
        deploy_id: restore the backup :func:`backup` made for this deploy...
        source: ...or this backup file (give one of the two). Its ``.sha256``
            sidecar must exist and match.
        backup_dir: where :func:`backup` put it (with ``deploy_id``).
        if_changed: skip (``ok``) when ``db``'s content (its SQL dump) already
            equals the backup's; without it a restore always restores.

    Plan: ``content: sha256 <current file> -> content of <backup> (sha256 ...), in
    place``; fails (nothing touched) when the backup is missing or does not match
    its sidecar. Apply, on the host: copy the backup to a temporary file beside
    ``db`` and check its integrity; keep the current content as
    ``<db>.old-<UTC timestamp>`` (an online copy, same owner and mode; the raw
    files when the database is too damaged to copy); then write the backup's
    pages **into** ``db`` with SQLite's online backup API: the file stays the
    same, so a running app's open connections see the restored data at their
    next query, with no restart. Only a live file too damaged to be written in
    place is replaced by rename (``Result.data["how"]`` says which). A database
    that did not exist is created (0600). ``Result.data``: ``previous`` (the
    kept copy), ``how``, ``source``.
    Undo: the kept content is written back in place (and its copy removed); a
    database that did not exist is removed again.
    """
    if (deploy_id is None) == (source is None):
        raise ConfigError("sqlite.restore: give either deploy_id or source (the backup file)")
    path = source if source is not None else backup_path(db, str(deploy_id), backup_dir)
    return RestoreTask(db, path, if_changed=if_changed)


# Row counts and the backup list/cleanup live in their own modules; they are SQLite
# tasks too, so they answer here.
from deploykit.tasks.sqlite_backups import (  # noqa: E402
    CleanupBackupsTask as CleanupBackupsTask,
)
from deploykit.tasks.sqlite_backups import (  # noqa: E402
    ListBackupsTask as ListBackupsTask,
)
from deploykit.tasks.sqlite_backups import cleanup_backups as cleanup_backups  # noqa: E402
from deploykit.tasks.sqlite_backups import list_backups as list_backups  # noqa: E402
from deploykit.tasks.sqlite_checks import (  # noqa: E402
    CompareCountsTask as CompareCountsTask,
)
from deploykit.tasks.sqlite_checks import (  # noqa: E402
    SnapshotCountsTask as SnapshotCountsTask,
)
from deploykit.tasks.sqlite_checks import compare_counts as compare_counts  # noqa: E402
from deploykit.tasks.sqlite_checks import snapshot_counts as snapshot_counts  # noqa: E402
