"""deploykit's own SQL migrations: a directory of ``NNNN_name.up.sql`` files (and optional
``NNNN_name.down.sql``), read on the controller, and what is pending or can be rolled back
against the applied rows. No database access here (see :mod:`.sql`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploykit.errors import ConfigError, TaskError

_FILE = re.compile(r"(?P<version>\d+)_(?P<name>[A-Za-z0-9_\-]+)\.(?P<direction>up|down)\.sql\Z")
# A file wrapping itself in BEGIN; ... COMMIT; would commit deploykit's transaction early.
_OWN_TRANSACTION = re.compile(r"^[ \t]*(BEGIN(?:\s+(?:WORK|TRANSACTION))?|START\s+TRANSACTION)\s*;",
                              re.I | re.M)


# -- the migration directory --------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One migration of a directory: ``NNNN_name.up.sql`` and maybe ``NNNN_name.down.sql``."""

    version: int
    label: str  # the version as the file writes it: "0003"
    name: str
    up_path: Path
    up_sql: str = field(repr=False)
    checksum: str  # SHA-256 of the .up.sql bytes
    down_path: Path | None = None
    down_sql: str | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """``0003_add_index``: how plans, results and errors name the migration."""
        return f"{self.label}_{self.name}"


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the ``schema_migrations`` table."""

    version: int
    name: str
    checksum: str
    applied_at: str = ""
    deploy_id: str | None = None


def _read_sql(path: Path) -> tuple[bytes, str]:
    """A migration file's bytes and text; refuses a file that opens its own transaction."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read migration {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"migration {path} is not UTF-8 text (byte {exc.start})") from None
    own = _OWN_TRANSACTION.search(text)
    if own is not None:
        line, _ = sql_error_location(text, own.start(1) + 1)
        raise ConfigError(f"{path}:{line}: {own[1]}: deploykit runs each migration in its own "
                          f"transaction; remove the file's BEGIN and COMMIT")
    return data, text


def load_migrations(directory: str | Path) -> list[Migration]:
    """Read a migration directory: every ``NNNN_name.up.sql`` (with its down file), by version.

    Files not ending in ``.sql`` are ignored (a README may sit there); a ``.sql``
    file not named ``NNNN_name.up.sql`` / ``.down.sql``, two migrations with one
    version, or a down file without its up file is a :class:`ConfigError`.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"migrations directory {root} does not exist or is not a directory")
    ups: dict[int, tuple[str, str, Path]] = {}
    downs: dict[int, tuple[str, Path]] = {}
    for path in sorted(root.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if match is None:
            raise ConfigError(f"migration file {path}: name must be NNNN_name.up.sql or "
                              f"NNNN_name.down.sql")
        version = int(match["version"])
        if match["direction"] == "up":
            if version in ups:
                raise ConfigError(f"migrations {ups[version][2].name} and {path.name} in {root} "
                                  f"have the same version {version}")
            ups[version] = (match["version"], match["name"], path)
        else:
            downs[version] = (match["name"], path)
    for version, (name, path) in downs.items():
        if version not in ups or ups[version][1] != name:
            raise ConfigError(f"{path} has no matching up file ({path.name[:-9]}.up.sql)")
    migrations = []
    for version in sorted(ups):
        label, name, up_path = ups[version]
        data, text = _read_sql(up_path)
        down_path = downs[version][1] if version in downs else None
        migrations.append(Migration(
            version=version, label=label, name=name, up_path=up_path, up_sql=text,
            checksum=hashlib.sha256(data).hexdigest(), down_path=down_path,
            down_sql=_read_sql(down_path)[1] if down_path else None))
    return migrations


def parse_version(value: int | str, what: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
        raise ConfigError(f"{what} must be a migration version number, not {value!r}")
    return int(value)


def _verify_applied(migrations: Sequence[Migration],
                    applied: Mapping[int, AppliedMigration]) -> None:
    """Every applied version is in the directory, with the checksum it was applied with."""
    by_version = {m.version: m for m in migrations}
    unknown = [a for v, a in sorted(applied.items()) if v not in by_version]
    if unknown:
        listed = ", ".join(f"{a.version}_{a.name}" for a in unknown)
        raise TaskError(f"the database has migrations this directory does not: {listed}; "
                        f"deploy the release that has them, or roll them back with it")
    for version, row in sorted(applied.items()):
        m = by_version[version]
        if row.checksum != m.checksum:
            raise TaskError(
                f"{m.up_path}: changed after it was applied (checksum {row.checksum[:12]} "
                f"applied{f' by deploy {row.deploy_id}' if row.deploy_id else ''}, file now "
                f"{m.checksum[:12]}); an applied migration must never change: write a new "
                f"migration instead")


def pending_migrations(migrations: Sequence[Migration], applied: Mapping[int, AppliedMigration],
                       to: int | None = None, *, allow_newer: bool = False
                       ) -> list[Migration]:
    """The migrations to apply, in order, up to version ``to`` (inclusive; None = all).

    Raises :class:`TaskError` when an applied migration changed or is unknown to
    the directory, when ``to`` names no migration, or when a pending migration
    is older than an applied one (out of order). With ``allow_newer``, applied
    versions above the directory's newest (a newer release's expand migrations,
    judged by :mod:`deploykit.tasks.migrations.policy`) are left alone.
    """
    if allow_newer:
        top = max((m.version for m in migrations), default=0)
        applied = {v: a for v, a in applied.items() if v <= top}
    _verify_applied(migrations, applied)
    if to is not None and to not in {m.version for m in migrations}:
        raise TaskError(f"to={to}: no migration has this version")
    todo = [m for m in migrations if m.version not in applied and (to is None or m.version <= to)]
    newest = max(applied, default=0)
    late = [m for m in todo if m.version < newest]
    if late:
        above = next(m for m in migrations if m.version == newest)
        raise TaskError(f"{late[0].id} is not applied but the newer {above.id} is: "
                        f"out-of-order migrations are refused; give it a version above "
                        f"{above.label}")
    return todo


def rollback_targets(migrations: Sequence[Migration], applied: Mapping[int, AppliedMigration],
                     *, steps: int | None = None, to: int | None = None) -> list[Migration]:
    """The applied migrations to roll back, newest first: the last ``steps``, or all above ``to``.

    Each must be in the directory with an unchanged up file and a down file,
    else :class:`TaskError` (before anything runs).
    """
    by_version = {m.version: m for m in migrations}
    versions = sorted(applied, reverse=True)
    if steps is not None:
        if steps > len(versions):
            raise TaskError(f"cannot roll back {steps} migration(s): only {len(versions)} "
                            f"applied")
        chosen = versions[:steps]
    else:
        assert to is not None
        chosen = [v for v in versions if v > to]
    _verify_applied(migrations, {v: applied[v] for v in chosen})
    targets = [by_version[v] for v in chosen]
    missing = [m for m in targets if m.down_sql is None]
    if missing:
        raise TaskError(f"cannot roll back {missing[0].id}: no down file "
                        f"{missing[0].up_path.with_name(missing[0].id + '.down.sql')}")
    return targets


def sql_error_location(text: str, position: int) -> tuple[int, int]:
    """``(line, column)``, both 1-based, of PostgreSQL's 1-based character ``position``."""
    before = text[:max(position - 1, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


