"""Restore with swap: :func:`restore`, :func:`undo_restore`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import sql

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.pg import PgSettings
from deploykit.shell import quote
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.counts import count_differences, render_differences
from deploykit.tasks.postgres.access import Access
from deploykit.tasks.postgres.checks import count_rows, table_identifier
from deploykit.tasks.postgres.dumps import (
    FileTask,
    backup_path,
    parse_dump,
    verify_script,
)
from deploykit.tasks.postgres.session import (
    SCOPE_KEY,
    DatabaseFacts,
    PgTask,
    Scope,
    Session,
    database_facts,
    describe_server,
    one_line,
)
from deploykit.tasks.postgres.swap import (
    database_exists,
    free_name,
    marker_text,
    parse_marker,
    redo_swap,
    setting_sql,
    stamp,
    swap_action,
    swap_back,
    swap_databases,
)


class RestoreTask(FileTask):
    """Restore a dump into ``<db>_restore``, verify it, and swap it in. See :func:`restore`."""

    kind = "postgres.restore"

    def __init__(self, db: str, source: str, *, tables: Sequence[str] = (),
                 expect_counts: Mapping[str, int] | None = None,
                 assertions: Sequence[str] = (), analyze: bool = True,
                 require_checksum: bool = False, if_changed: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backup_path("x", db, "x")  # validates the database name
        self.if_changed = if_changed
        if not source.startswith("/") or "\0" in source:
            raise ConfigError(f"dump path must be absolute, got {source!r}")
        self.db = db
        self.source = source
        self.expect_counts = dict(expect_counts or {})
        self.tables = tuple(dict.fromkeys([*tables, *self.expect_counts]))
        for t in self.tables:
            table_identifier(t)
        self.assertions = tuple(assertions)
        self.analyze = analyze
        self.require_checksum = require_checksum

    def target(self) -> str:
        return f"{self.db} <- {self.source}"

    def probe_script(self) -> str:
        check = verify_script(quote(self.source), reader=self.reader)
        if self.require_checksum:
            return check
        # no checksum file: the other means of verifying is reading every block
        return check + "\n" + (
            'if [ -f "$dk_dump" ] && [ ! -f "$dk_dump.sha256" ]; then '
            f'if dk_err=$({self.reader} --file=/dev/null < "$dk_dump" 2>&1 >/dev/null); '
            "then echo 'read ok'; "
            "else printf 'read fail %s\\n' \"$(printf '%s' \"$dk_err\" | tr '\\n' ' ' | "
            "cut -c1-300)\"; fi; fi")

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        dump = facts["dump"] = parse_dump(f["lines"], self.source)
        problems = dump.problems(require_checksum=self.require_checksum)
        where = f"cannot restore database {self.db!r} from {self.source} on host {conn.name}"
        if problems:
            raise self.error(conn, f"{where}: the dump {'; '.join(problems)}")
        if dump.sidecar is None:
            read = f["values"].get("read", "fail (no answer)")
            if read != "ok":
                raise self.error(conn, f"{where}: the dump has no checksum file and "
                                       f"pg_restore cannot read it in full "
                                       f"({read.removeprefix('fail ').strip()}); nothing was "
                                       f"changed")
            verified_by = (f"reading the whole dump with pg_restore (no checksum file "
                           f"{self.source}.sha256)")
        else:
            verified_by = f"its checksum file {self.source}.sha256"
        self.client(conn, "pg_restore")  # a configuration error shows before anything else
        live = facts["live"] = database_facts(self.scope(facts).sql("postgres"), self.db)
        if live is None:
            raise self.error(conn, f"database {self.db!r} does not exist "
                                   f"({describe_server(conn, self.settings_for(conn))}); restore "
                                   f"replaces an existing database")
        marker = parse_marker(live.comment)
        data = self.scope(facts).data
        data.update(database=self.db, source=self.source, sha256=dump.actual,
                    verified_by=verified_by)
        plan = Plan()
        same = marker is not None and marker.get("sha256") == dump.actual
        if same and (self.if_changed or facts.get("after_apply")):
            data["previous"] = marker.get("previous") if marker else None
            return plan
        plan.add("database", f"{self.db} as it is" if not same else
                 f"{self.db} (already restored from this dump, changed since or not)",
                 f"{self.db} restored from {self.source} (sha256:{(dump.actual or '')[:12]})"
                 + ("" if dump.sidecar is not None else ", no checksum file: read in full"))
        plan.add("previous database", None, f"kept as {self.db}_old_<UTC timestamp>")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        scope = self.scope(facts)
        s = scope.sql("postgres")
        live: DatabaseFacts = facts["live"]
        staging = f"{self.db}_restore"
        ident = sql.Identifier(staging)
        if database_exists(s, staging):
            s.write(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
        s.write(self.create_like(s, live, staging))
        try:
            self.copy_properties(s, staging)
            prefix, stdin = self.client(conn, "pg_restore")
            self.script(conn, stdin,
                        [f"{prefix} --exit-on-error --dbname={quote(staging)} "
                         f"< {quote(self.source)}"],
                        f"restore of {self.source} into database {staging} on host "
                        f"{conn.name} failed ({self.db} is untouched)")
            self.verify(conn, scope, staging)
            scope.close(staging)
            retire = free_name(s, f"{self.db}_old_{stamp()}")
            record = {"sha256": facts["dump"].actual, "source": self.source,
                      "at": stamp(), "previous": retire}
            swap_started = time.monotonic()
            swap_databases(s, self.db, staging, retire, marker_text(record))
            scope.data["swap_seconds"] = round(time.monotonic() - swap_started, 3)
            scope.data["previous_accepts_connections"] = True
        except DeployError:
            scope.close(staging)
            with contextlib.suppress(DeployError):
                s.write(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            raise
        scope.data["previous"] = retire
        undo.push(f"swap database {self.db} back to {retire}", swap_action(
            self.settings_for(conn), self.name, lambda x: swap_back(x, self.db, retire)))

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Re-probe: the live database now records this dump (a restore is not redone)."""
        fresh = self.probe(conn)
        fresh[SCOPE_KEY] = facts[SCOPE_KEY]
        fresh["after_apply"] = True
        return self.plan(conn, fresh)

    def create_like(self, s: Session, live: DatabaseFacts, staging: str) -> sql.Composed:
        """CREATE DATABASE ``staging`` like the live database: owner, encoding, locale
        (ICU too), tablespace and connection limit."""
        info: dict[str, Any] = s.value(
            "SELECT to_jsonb(d) || jsonb_build_object('spcname', t.spcname) FROM pg_database d "
            "JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s",
            [self.db]) or {}
        options = [sql.SQL("TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {} "
                           "TABLESPACE {} CONNECTION LIMIT {}").format(
            sql.Identifier(live.owner), sql.Literal(live.encoding), sql.Literal(live.collate),
            sql.Literal(live.ctype), sql.Identifier(info.get("spcname") or "pg_default"),
            sql.Literal(int(info.get("datconnlimit", -1))))]
        if info.get("datlocprovider") == "i":  # PostgreSQL 15+: an ICU database
            options.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                sql.Literal(info.get("daticulocale") or info.get("datlocale"))))
        return sql.SQL("CREATE DATABASE {} WITH ").format(sql.Identifier(staging)) + \
            sql.SQL(" ").join(options)

    def copy_properties(self, s: Session, staging: str) -> None:
        """Give ``staging`` the live database's privileges and per-database settings."""
        ident = sql.Identifier(staging)
        if not s.value("SELECT datacl IS NULL FROM pg_database WHERE datname = %s", [self.db]):
            s.write(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
            s.write(sql.SQL("REVOKE ALL ON DATABASE {0} FROM {1}").format(
                ident, sql.Identifier(str(s.value(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                    [self.db])))))
            for grantee, privilege, grantable in s.rows(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) "
                    "END, a.privilege_type, a.is_grantable FROM pg_database d, "
                    "aclexplode(d.datacl) a WHERE d.datname = %s", [self.db]):
                s.write(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege), ident,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
        for rolname, item in s.rows(
                "SELECT r.rolname, unnest(c.setconfig) FROM pg_db_role_setting c "
                "JOIN pg_database d ON d.oid = c.setdatabase "
                "LEFT JOIN pg_roles r ON r.oid = c.setrole WHERE d.datname = %s", [self.db]):
            name, _, value = str(item).partition("=")
            setting = setting_sql(name, value)
            if rolname is None:
                s.write(sql.SQL("ALTER DATABASE {} SET {}").format(ident, setting))
            else:
                s.write(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {}").format(
                    sql.Identifier(rolname), ident, setting))

    def verify(self, conn: Connection, scope: Scope, staging: str) -> None:
        """Counts, expected counts and assertions in the restored copy; ANALYZE it."""
        st = scope.sql(staging)
        counts, missing = count_rows(st, self.tables)
        scope.data["counts"] = counts
        problems = []
        if missing:
            problems.append(f"missing table(s): {', '.join(missing)}")
        differences = [d for d in count_differences(self.expect_counts, counts)
                       if d.now is not None]
        if differences:
            problems.append("row counts differ from the expected ones:\n"
                            + render_differences(differences))
        for assertion in self.assertions:
            with st.transaction():
                st.rows("SET TRANSACTION READ ONLY")
                value = st.value(assertion)
            if value is not True:
                problems.append(f"assertion {one_line(assertion, 120)!r} returned {value!r}")
        if problems:
            raise self.error(conn, f"the restored copy {staging} failed verification, so "
                                   f"{self.db} is untouched: " + "; ".join(problems))
        if self.analyze:
            st.write("ANALYZE")


def restore(db: str, source: str, *, tables: Sequence[str] = (),
            expect_counts: Mapping[str, int] | None = None, assertions: Sequence[str] = (),
            analyze: bool = True, require_checksum: bool = False, if_changed: bool = False,
            os_user: str | None = "postgres", bin_dir: str | None = None,
            access: Access | None = None, timeout: float | None = None,
            settings: PgSettings | None = None, name: str | None = None) -> RestoreTask:
    """Replace database ``db`` by a restore of the dump ``source`` (a path on the host),
    keeping the current ``db`` as ``<db>_old_<UTC timestamp>``.

    Steps (see the module docstring for the exact guarantees of the swap):
    check the dump (``pg_restore --list``; its ``.sha256`` sidecar when present,
    required with ``require_checksum``); create ``<db>_restore`` (dropping a
    leftover one) with the live database's owner, encoding, locale, privileges
    and settings; ``pg_restore --exit-on-error`` into it; verify it; ANALYZE
    it; swap. Any failure before the swap drops ``<db>_restore`` and leaves
    ``db`` untouched, its sessions uninterrupted.

    Args:
        tables: tables (``"t"`` or ``"schema.t"``) that must exist in the
            restored copy; their row counts go to ``Result.data["counts"]``.
        expect_counts: exact row counts the restored tables must have (e.g.
            :func:`snapshot_counts` data taken when the backup was made).
        assertions: SQL queries returning one boolean, each must be true in
            the restored copy (read-only).
        analyze: run ANALYZE on the restored copy before the swap.
        require_checksum: refuse a dump without its ``.sha256`` file.
        if_changed: skip when ``db`` already records this dump (see above).
        os_user, bin_dir, access, timeout, settings: as for :func:`backup`.

    The dump is checked first (``pg_restore --list``; its ``.sha256`` sidecar when
    present). Without a sidecar it is read in full by ``pg_restore`` before
    anything changes (``Result.data["verified_by"]`` says which way it was
    verified); ``require_checksum=True`` refuses such a dump instead.

    A restore is an action, not a state: asked for, it always restores (with
    swap), even when ``db`` came from this very dump (rows written since then
    are in the set-aside copy). ``if_changed=True`` skips it (``ok``) when
    ``db``'s comment records this dump's SHA-256, whatever was written since.
    The set-aside ``<db>_old_<timestamp>`` accepts connections (copy rows out
    of it; ``invoke prune`` keeps the newest). Undo (registered after the swap):
    :func:`undo_restore`'s swap back. ``Result.data``: ``source``, ``sha256``,
    ``previous`` (the kept database), ``counts``, ``swap_seconds`` (from refusing
    new sessions to the commit: what clients of ``db`` saw as downtime).
    """
    return RestoreTask(db, source, tables=tables, expect_counts=expect_counts,
                       assertions=assertions, analyze=analyze,
                       require_checksum=require_checksum, if_changed=if_changed,
                       os_user=os_user, bin_dir=bin_dir, access=access,
                       timeout=timeout, settings=settings, name=name)


class UndoRestoreTask(PgTask):
    """Swap the database kept by the last restore back in. See :func:`undo_restore`."""

    kind = "postgres.undo_restore"

    def __init__(self, db: str, *, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        backup_path("x", db, "x")  # validates the database name
        self.db = db

    def target(self) -> str:
        return self.db

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        s = self.scope(facts).sql("postgres")
        live = database_facts(s, self.db)
        if live is None:
            raise self.error(conn, f"database {self.db!r} does not exist "
                                   f"({describe_server(conn, self.settings_for(conn))})")
        marker = parse_marker(live.comment) or {}
        previous = facts["previous"] = marker.get("previous")
        self.scope(facts).data["database"] = self.db
        plan = Plan()
        if previous is None:
            return plan
        if not database_exists(s, previous):
            raise self.error(conn, f"database {previous}, kept by the restore of {self.db}, "
                                   f"no longer exists: cannot swap {self.db} back")
        plan.add("database", f"{self.db} restored from {marker.get('source')}",
                 f"{previous} (as before the restore)")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql("postgres")
        retire = swap_back(s, self.db, facts["previous"])
        self.scope(facts).data["restored_kept_as"] = retire
        undo.push(f"swap the restored database {retire} back in as {self.db}", swap_action(
            self.settings_for(conn), self.name, lambda x: redo_swap(x, self.db, retire)))


def undo_restore(db: str, *, settings: PgSettings | None = None,
                 name: str | None = None) -> UndoRestoreTask:
    """Undo the last :func:`restore` of ``db``: the database it kept
    (``<db>_old_<timestamp>``) becomes ``db`` again, the restored one is kept as
    ``<db>_undone_<timestamp>``, with the same swap as the restore.

    ``ok`` when ``db`` carries no restore record with a kept database (never
    restored, or already swapped back): applied twice, the second run is
    ``ok``. A kept database that was dropped since is an error naming it.
    Undo: swaps the restored database back in.
    """
    return UndoRestoreTask(db, settings=settings, name=name)
