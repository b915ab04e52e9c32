"""Swapping databases by name: the core of a restore and of its undo."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psycopg import sql

from deploykit.connection import Connection
from deploykit.errors import DeployError, TaskError
from deploykit.pg import PgSettings
from deploykit.tasks.postgres.session import Session, database_facts, open_session

SWAP_WAIT = 10.0
"""Seconds to wait for terminated sessions to end before a swap gives up."""
_MARKER = "deploykit restore "

_LIST_GUCS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                        "shared_preload_libraries", "local_preload_libraries"})


def parse_marker(comment: str | None) -> dict[str, Any] | None:
    """The restore record deploykit keeps in a database's comment, if it has one."""
    if not comment or not comment.startswith(_MARKER):
        return None
    try:
        data = json.loads(comment[len(_MARKER):])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def marker_text(marker: Mapping[str, Any]) -> str:
    return _MARKER + json.dumps(dict(marker), sort_keys=True)


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as stored (``"$user", public``), unquoted."""
    items: list[str] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if c == '"':
            if quoted and value[i + 1:i + 2] == '"':
                buf.append('"')
                i += 1
            else:
                quoted = not quoted
        elif c == "," and not quoted:
            items.append("".join(buf))
            buf = []
        elif quoted or not c.isspace():
            buf.append(c)
        i += 1
    items.append("".join(buf))
    return [item for item in items if item]


def setting_sql(name: str, value: str) -> sql.Composable:
    """``name = value`` for ALTER DATABASE/ROLE ... SET, from a stored ``setconfig`` item."""
    ident = sql.Identifier(*name.split("."))
    if name.lower() in _LIST_GUCS:
        literal: sql.Composable = sql.SQL(", ").join(
            sql.Literal(v) for v in split_guc_list(value)) or sql.Literal("")
    else:
        literal = sql.Literal(value)
    return sql.SQL("{} = {}").format(ident, literal)


def stamp() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())


def database_exists(s: Session, db: str) -> bool:
    return bool(s.value("SELECT 1 FROM pg_database WHERE datname = %s", [db]))


def free_name(s: Session, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... when taken."""
    name, n = base, 1
    while database_exists(s, name):
        n += 1
        name = f"{base}_{n}"
    return name


def terminate(s: Session, names: Sequence[str], wait: float = SWAP_WAIT) -> None:
    """Terminate every other session on databases ``names`` and wait until they are gone."""
    deadline = time.monotonic() + wait
    while s.rows("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                 "ANY(%s) AND pid <> pg_backend_pid()", [list(names)], write=True):
        if time.monotonic() > deadline:
            raise TaskError(f"sessions on database(s) {', '.join(names)} did not end within "
                            f"{wait:g} s of being terminated")
        time.sleep(0.05)


def swap_databases(s: Session, live: str, incoming: str, retire_as: str,
                   comment: str | None) -> None:
    """Put database ``incoming`` in the place of ``live``, which becomes ``retire_as``.

    ``ALLOW_CONNECTIONS false`` on both and their sessions terminated, then one
    transaction: both renames, ``ALLOW_CONNECTIONS true`` on the new ``live`` and on
    ``retire_as`` (so its rows can be read or copied out), and ``live``'s comment
    (when given).
    On failure nothing is renamed and ``live`` accepts connections again.
    """
    old, new, retired = (sql.Identifier(n) for n in (live, incoming, retire_as))
    for ident in (old, new):
        s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
    try:
        terminate(s, [live, incoming])
        with s.transaction():
            s.write(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, retired))
            s.write(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(new, old))
            s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old))
            s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(retired))
            if comment is not None:
                s.write(sql.SQL("COMMENT ON DATABASE {} IS {}").format(old, sql.Literal(comment)))
    except DeployError as exc:
        try:
            s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old))
        except DeployError:
            raise TaskError(f"{exc.message}; database {live} may not accept connections now "
                            f"(fix: ALTER DATABASE {old.as_string(None)} ALLOW_CONNECTIONS true, "
                            f"or run the restore again)", host=exc.host, task=exc.task) from None
        raise


def _incoming_comment(s: Session, incoming: str, previous: str | None) -> str | None:
    """The comment for a database swapped back in: its restore record with
    ``previous`` set (or removed when None); None leaves a comment that is not ours."""
    facts = database_facts(s, incoming)
    marker = parse_marker(facts.comment if facts else None)
    if marker is None:
        return None
    marker.pop("previous", None)
    if previous is not None:
        marker["previous"] = previous
    return marker_text(marker)


def swap_back(s: Session, db: str, previous: str) -> str:
    """Undo a restore: ``previous`` becomes ``db`` again, the restored ``db`` is kept as
    ``<db>_undone_<timestamp>`` (returned)."""
    if not database_exists(s, previous):
        raise TaskError(f"database {previous}, kept by the restore of {db}, no longer exists: "
                        f"cannot swap {db} back")
    retire = free_name(s, f"{db}_undone_{stamp()}")
    swap_databases(s, db, previous, retire, _incoming_comment(s, previous, None))
    return retire


def redo_swap(s: Session, db: str, restored: str) -> str:
    """Undo an undo: the restored database ``restored`` becomes ``db`` again."""
    retire = free_name(s, f"{db}_old_{stamp()}")
    swap_databases(s, db, restored, retire, _incoming_comment(s, restored, retire))
    return retire


def swap_action(settings: PgSettings, task: str,
                 swap: Callable[[Session], str]) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        with open_session(conn, settings, "postgres", f"undo {task}") as s:
            swap(s)
    return run
