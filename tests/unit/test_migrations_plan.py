"""Planning logic of the migration tasks, without hosts: directory in, plan or error out.

The SQL side: reading a migration directory, which migrations are pending or
to roll back given recorded ``schema_migrations`` rows, PostgreSQL error
positions mapped to lines. The adapters: ``alembic current`` output and the
command adapter's pending/current tests, fed recorded status outputs.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.inventory import Host
from deploykit.secrets import Secret
from deploykit.tasks import migrations
from deploykit.tasks.migrations import (
    AppliedMigration,
    Migration,
    load_migrations,
    parse_alembic_revisions,
    pending_migrations,
    rollback_targets,
    sql_error_location,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "migrations"
BASIC = FIXTURES / "basic"


@pytest.fixture
def conn() -> Connection:
    """A connection that is never opened: plans only need the host's name."""
    return Connection(Host(name="db-1", address="198.18.0.250"))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """A writable copy of the basic fixture directory."""
    return Path(shutil.copytree(BASIC, tmp_path / "migrations"))


def rows(migrations_: list[Migration], *versions: int) -> dict[int, AppliedMigration]:
    """``schema_migrations`` rows recording ``versions`` as applied with their checksums."""
    by_version = {m.version: m for m in migrations_}
    return {v: AppliedMigration(v, by_version[v].name, by_version[v].checksum) for v in versions}


def ids(found: list[Migration]) -> list[str]:
    return [m.id for m in found]


# -- the directory -------------------------------------------------------------------------


def test_load_reads_every_migration_in_version_order_with_checksums_and_down_files() -> None:
    found = load_migrations(BASIC)
    assert ids(found) == ["0001_create_accounts", "0002_add_email", "0003_create_orders"]
    first = found[0]
    assert (first.version, first.label, first.name) == (1, "0001", "create_accounts")
    data = (BASIC / "0001_create_accounts.up.sql").read_bytes()
    assert first.checksum == hashlib.sha256(data).hexdigest()
    assert first.up_sql == data.decode()
    assert first.down_path == BASIC / "0001_create_accounts.down.sql"
    assert first.down_sql == "DROP TABLE accounts;\n"


def test_versions_order_numerically_not_as_text(tmp_path: Path) -> None:
    for name in ("10_later.up.sql", "9_earlier.up.sql", "0100_last.up.sql"):
        (tmp_path / name).write_text("SELECT 1;\n")
    assert ids(load_migrations(tmp_path)) == ["9_earlier", "10_later", "0100_last"]


def test_a_migration_without_down_file_has_none(directory: Path) -> None:
    (directory / "0002_add_email.down.sql").unlink()
    second = load_migrations(directory)[1]
    assert second.down_path is None and second.down_sql is None


@pytest.mark.parametrize("name, message", [
    ("0004-dash.up.sql", "name must be NNNN_name.up.sql"),
    ("0004_x.sql", "name must be NNNN_name.up.sql"),
    ("0002_other.up.sql", "have the same version 2"),
    ("0009_lonely.down.sql", "0009_lonely.down.sql has no matching up file"),
    ("0003_wrong_name.down.sql", "has no matching up file (0003_wrong_name.up.sql)"),
])
def test_badly_named_files_are_config_errors(directory: Path, name: str, message: str) -> None:
    (directory / name).write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_migrations(directory)


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"migrations directory {tmp_path / 'nope'} does not"):
        load_migrations(tmp_path / "nope")


def test_non_utf8_file_is_a_config_error(directory: Path) -> None:
    (directory / "0004_latin1.up.sql").write_bytes(b"SELECT 'caf\xe9';\n")
    with pytest.raises(ConfigError, match=r"0004_latin1.up.sql is not UTF-8 text \(byte 11\)"):
        load_migrations(directory)


@pytest.mark.parametrize("statement", ["BEGIN;", "begin transaction ;", "START TRANSACTION;",
                                       "  BEGIN WORK;"])
def test_a_file_opening_its_own_transaction_is_refused_with_its_line(
        directory: Path, statement: str) -> None:
    (directory / "0004_wrapped.up.sql").write_text(f"-- wrapped\n{statement}\nSELECT 1;\n"
                                                   "COMMIT;\n")
    with pytest.raises(ConfigError, match=r"0004_wrapped.up.sql:2: .*runs each migration in "
                                          r"its own transaction"):
        load_migrations(directory)


def test_plpgsql_begin_blocks_are_not_mistaken_for_transactions() -> None:
    # 0002_add_email holds "BEGIN" / "END;" of a function body
    assert "\nBEGIN\n" in load_migrations(BASIC)[1].up_sql


# -- pending -------------------------------------------------------------------------------


def test_everything_is_pending_on_an_empty_database() -> None:
    found = load_migrations(BASIC)
    assert ids(pending_migrations(found, {})) == ids(found)


def test_pending_are_those_not_applied_in_order_and_to_stops_at_a_version() -> None:
    found = load_migrations(BASIC)
    assert ids(pending_migrations(found, rows(found, 1))) == ["0002_add_email",
                                                               "0003_create_orders"]
    assert ids(pending_migrations(found, rows(found, 1), to=2)) == ["0002_add_email"]
    assert pending_migrations(found, rows(found, 1, 2, 3)) == []
    assert pending_migrations(found, rows(found, 1, 2, 3), to=1) == []  # past it: not down


def test_to_must_name_a_migration() -> None:
    with pytest.raises(TaskError, match="to=7: no migration has this version"):
        pending_migrations(load_migrations(BASIC), {}, to=7)


def test_a_changed_applied_migration_is_an_error_naming_the_file(directory: Path) -> None:
    applied = rows(load_migrations(directory), 1, 2)
    applied[2] = AppliedMigration(2, "add_email", applied[2].checksum, deploy_id="d-42")
    with (directory / "0002_add_email.up.sql").open("a") as f:
        f.write("-- an innocent comment\n")
    with pytest.raises(TaskError) as info:
        pending_migrations(load_migrations(directory), applied)
    assert info.value.message.startswith(
        f"{directory / '0002_add_email.up.sql'}: changed after it was applied (checksum "
        f"{applied[2].checksum[:12]} applied by deploy d-42, file now ")
    assert "write a new migration instead" in info.value.message


def test_an_applied_version_missing_from_the_directory_is_an_error() -> None:
    found = load_migrations(BASIC)
    applied = {**rows(found, 1), 7: AppliedMigration(7, "from_the_future", "0" * 64)}
    with pytest.raises(TaskError, match="the database has migrations this directory does not: "
                                        "7_from_the_future"):
        pending_migrations(found, applied)


def test_a_pending_migration_older_than_an_applied_one_is_refused() -> None:
    found = load_migrations(BASIC)
    with pytest.raises(TaskError, match="0002_add_email is not applied but the newer "
                                        "0003_create_orders is: out-of-order migrations are "
                                        "refused; give it a version above 0003"):
        pending_migrations(found, rows(found, 1, 3))


# -- rollback --------------------------------------------------------------------------------


def test_rollback_steps_takes_the_newest_first_and_to_everything_above() -> None:
    found = load_migrations(BASIC)
    applied = rows(found, 1, 2, 3)
    assert ids(rollback_targets(found, applied, steps=1)) == ["0003_create_orders"]
    assert ids(rollback_targets(found, applied, steps=2)) == ["0003_create_orders",
                                                               "0002_add_email"]
    assert ids(rollback_targets(found, applied, to=1)) == ["0003_create_orders",
                                                           "0002_add_email"]
    assert rollback_targets(found, rows(found, 1), to=1) == []
    assert ids(rollback_targets(found, applied, to=0)) == ["0003_create_orders",
                                                           "0002_add_email",
                                                           "0001_create_accounts"]


def test_rollback_of_more_than_applied_is_an_error() -> None:
    found = load_migrations(BASIC)
    with pytest.raises(TaskError, match=r"cannot roll back 3 migration\(s\): only 2 applied"):
        rollback_targets(found, rows(found, 1, 2), steps=3)


def test_rollback_needs_a_down_file_for_each_target(directory: Path) -> None:
    (directory / "0002_add_email.down.sql").unlink()
    found = load_migrations(directory)
    assert ids(rollback_targets(found, rows(found, 1, 2, 3), steps=1)) == ["0003_create_orders"]
    with pytest.raises(TaskError, match="cannot roll back 0002_add_email: no down file "
                                        f"{directory / '0002_add_email.down.sql'}"):
        rollback_targets(found, rows(found, 1, 2, 3), steps=2)


def test_rollback_refuses_a_target_whose_up_file_changed(directory: Path) -> None:
    applied = rows(load_migrations(directory), 1, 2, 3)
    (directory / "0003_create_orders.up.sql").write_text("-- rewritten\n")
    with pytest.raises(TaskError, match=r"0003_create_orders\.up\.sql: changed after it was"):
        rollback_targets(load_migrations(directory), applied, steps=1)


def test_rollback_arguments_are_checked_when_the_task_is_built() -> None:
    with pytest.raises(ConfigError, match="give steps or to, not both"):
        migrations.rollback(BASIC, database="app", steps=1, to=2)
    with pytest.raises(ConfigError, match="steps must be a positive integer, not 0"):
        migrations.rollback(BASIC, database="app", steps=0)
    assert migrations.rollback(BASIC, database="app").steps == 1
    assert migrations.rollback(BASIC, database="app", to="0002").to == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"database": ""}, "migrate: database is required"),
    ({"database": "app", "table": "x; DROP TABLE y"}, "table must be a name or schema.name"),
    ({"database": "app", "to": "two"}, "migrate: to must be a migration version number"),
    ({"database": "app", "lock_timeout": -1}, "lock_timeout must not be negative"),
])
def test_migrate_arguments_are_checked_when_the_task_is_built(
        kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        migrations.migrate(BASIC, **kwargs)  # type: ignore[arg-type]


def test_migrate_plan_lists_pending_migrations(conn: Connection) -> None:
    task = migrations.migrate(BASIC, database="app", to=2)
    found = load_migrations(BASIC)
    plan = task.plan(conn, {"applied": rows(found, 1)})
    assert plan.render() == "0002_add_email: pending -> applied"
    assert not task.plan(conn, {"applied": rows(found, 1, 2)})
    assert task.name == f"migrate app {BASIC}"


def test_migrate_plan_error_names_host_and_task(conn: Connection, directory: Path) -> None:
    task = migrations.migrate(directory, database="app")
    applied = rows(load_migrations(directory), 1)
    (directory / "0001_create_accounts.up.sql").write_text("-- changed\n")
    with pytest.raises(TaskError) as info:
        task.plan(conn, {"applied": applied})
    assert (info.value.host, info.value.task) == ("db-1", task.name)
    assert str(info.value).startswith(f"[host db-1, task {task.name}] {directory}")


def test_rollback_plan_lists_what_would_be_rolled_back(conn: Connection) -> None:
    found = load_migrations(BASIC)
    plan = migrations.rollback(BASIC, database="app", to=1).plan(
        conn, {"applied": rows(found, 1, 2, 3)})
    assert plan.render() == ("0003_create_orders: applied -> rolled back\n"
                             "0002_add_email: applied -> rolled back")


# -- error positions -------------------------------------------------------------------------


@pytest.mark.parametrize("position, expected", [(1, (1, 1)), (5, (1, 5)), (8, (2, 1)),
                                                (16, (3, 3)), (7, (1, 7))])
def test_sql_error_location_maps_a_character_position_to_line_and_column(
        position: int, expected: tuple[int, int]) -> None:
    assert sql_error_location("CREATE\nTABLE\nxy zz", position) == expected


def test_sql_error_location_counts_characters_not_bytes() -> None:
    text = "-- café ☕\nSELEC 1;"
    assert sql_error_location(text, text.index("SELEC") + 1) == (2, 1)


# -- alembic ---------------------------------------------------------------------------------


def test_alembic_current_lines_parse_to_revisions_and_head_markers() -> None:
    assert parse_alembic_revisions([]) == []
    assert parse_alembic_revisions(["c0ffee000002 (head)"]) == [("c0ffee000002", True)]
    assert parse_alembic_revisions(["c0ffee000001"]) == [("c0ffee000001", False)]
    assert parse_alembic_revisions(["ae10 (effective head)", "bb20 (branchpoint)"]) == [
        ("ae10", True), ("bb20", False)]
    assert parse_alembic_revisions([
        "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.",
        "c0ffee000002 (head)"]) == [("c0ffee000002", True)]


@pytest.mark.parametrize("action, target, current, at_head, expected", [
    ("upgrade", "head", [], False, "revision: base -> head"),
    ("upgrade", "head", ["c1"], False, "revision: c1 -> head"),
    ("upgrade", "head", ["c2"], True, ""),
    ("upgrade", "+1", ["c2"], True, ""),
    ("upgrade", "c1", ["c1"], False, ""),
    ("upgrade", "c2", ["c1"], False, "revision: c1 -> c2"),
    ("downgrade", "-1", ["c2"], True, "revision: c2 -> -1"),
    ("downgrade", "-1", [], False, ""),
    ("downgrade", "base", [], False, ""),
    ("downgrade", "base", ["c1"], False, "revision: c1 -> base"),
    ("downgrade", "c1", ["c1"], False, ""),
])
def test_alembic_plan(conn: Connection, action: str, target: str, current: list[str],
                      at_head: bool, expected: str) -> None:
    make = migrations.alembic_migrate if action == "upgrade" else migrations.alembic_downgrade
    task = make("/srv/app/venv/bin/alembic", target)
    assert task.plan(conn, {"status": current, "at_head": at_head}).render() == expected


def test_alembic_probe_is_batched_only_without_secrets() -> None:
    plain = migrations.alembic_migrate(["/srv/v/bin/alembic", "-c", "/srv/a b/alembic.ini"],
                                       env={"APP_ENV": "prod"}, chdir="/srv/app")
    script = plain.probe_script()
    assert script.startswith("export APP_ENV=prod\n")
    assert "cd -- /srv/app && /srv/v/bin/alembic -c '/srv/a b/alembic.ini' current" in script
    hidden = migrations.alembic_migrate("alembic", env={"DATABASE_URL": Secret("pw")})
    assert hidden.probe_script() == ":"
    with pytest.raises(TaskError):
        hidden.parse("")  # nothing batched: the runner leaves the probe to the task


def test_alembic_parse_reads_tagged_output_and_refuses_a_failed_current() -> None:
    task = migrations.alembic_migrate("alembic")
    assert task.parse("current c0ffee000002 (head)\ncurrent-rc 0\n") == {
        "status": ["c0ffee000002"], "at_head": True}
    assert task.parse("current \ncurrent-rc 0\n") == {"status": [], "at_head": False}
    with pytest.raises(TaskError, match="alembic current exited with code 1"):
        task.parse("current \ncurrent-rc 1\n")


def test_alembic_heads_target_also_reads_the_script_heads() -> None:
    task = migrations.alembic_migrate(["alembic"], "heads")
    assert task.status_command() == "alembic current && echo --deploykit-alembic-heads-- " \
                                    "&& alembic heads"
    one_of_two = ["a1 (head)", "--deploykit-alembic-heads--", "a1 (head)", "b1 (head)"]
    assert task.read(one_of_two) == {"status": ["a1"], "at_head": False}
    both = ["b1 (head)", "a1 (head)", "--deploykit-alembic-heads--", "a1 (head)", "b1 (head)"]
    assert task.read(both) == {"status": ["a1", "b1"], "at_head": True}
    assert migrations.alembic_migrate(["alembic"]).status_command() == "alembic current"


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "head of state"}, "target must be a revision"),
    ({"command_prefix": " "}, "alembic: command_prefix is empty"),
    ({"command_prefix": ["alembic", Secret("pw")]}, "pass a Secret through env="),
    ({"env": {"BAD-NAME": "x"}}, "invalid environment variable name 'BAD-NAME'"),
    ({"chdir": "srv/app"}, "chdir must be an absolute path"),
])
def test_alembic_arguments_are_checked(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"command_prefix": "alembic", **kwargs}
    with pytest.raises(ConfigError, match=message):
        migrations.alembic_migrate(**args)  # type: ignore[arg-type]


# -- command adapter -------------------------------------------------------------------------

ARTISAN_STATUS = """\
  Migration name .............................................. Batch / Status
  2024_01_01_000000_create_users_table ................................ [1] Ran
  2024_02_01_000000_add_avatar_to_users ................................. Pending
"""


def test_command_plan_uses_the_pending_regex_and_shows_current(conn: Connection) -> None:
    task = migrations.command_migrate("php artisan migrate:status",
                                      "php artisan migrate --force",
                                      pending=r"\bPending$", current=r"(\S+) \.+ \[\d+\] Ran$")
    facts = task.parse("".join(f"status {line}\n" for line in ARTISAN_STATUS.splitlines())
                       + "status-rc 0\n")
    assert facts["status"] == ARTISAN_STATUS.rstrip("\n")
    assert task.describe(facts) == "2024_01_01_000000_create_users_table"
    assert task.plan(conn, facts).render() == (
        "migrations: pending at 2024_01_01_000000_create_users_table -> applied")
    done = {"status": ARTISAN_STATUS.replace("... Pending", "[2] Ran")}
    assert not task.plan(conn, done)


def test_command_pending_may_be_a_callable_and_its_bugs_fail_the_task(conn: Connection) -> None:
    task = migrations.command_migrate("flask db current", "flask db upgrade",
                                      pending=lambda out: "(head)" not in out)
    assert task.plan(conn, {"status": "3f2a1b (head)"}).render() == ""
    assert task.plan(conn, {"status": "1a2b3c"}).render() == (
        "migrations: pending at 1a2b3c -> applied")
    broken = migrations.command_migrate("s", "a", pending=lambda out: 1 / 0 > 0)
    with pytest.raises(TaskError, match="pending test raised ZeroDivisionError"):
        broken.plan(conn, {"status": ""})


def test_command_without_pending_test_always_plans_the_apply(conn: Connection) -> None:
    task = migrations.command_migrate(["tool", "status"], ["tool", "apply"])
    assert task.plan(conn, {"status": "anything"}).render() == (
        "migrations: unknown (no pending test) -> run tool apply")


@pytest.mark.parametrize("kwargs, message", [
    ({"status": ""}, "the status command is empty"),
    ({"apply": ["migrate", "--password", Secret("pw")]},
     "the apply command takes strings only; pass a Secret through env="),
    ({"apply": []}, "the apply command is empty"),
    ({"rollback": "  "}, "the rollback command is empty"),
    ({"pending": "("}, "bad regular expression"),
    ({"current": "(a)(b)"}, "current must have at most one group"),
])
def test_command_arguments_are_checked(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"status": "s", "apply": "a", **kwargs}
    with pytest.raises(ConfigError, match=message):
        migrations.command_migrate(**args)  # type: ignore[arg-type]
