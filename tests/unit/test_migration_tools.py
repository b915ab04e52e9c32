"""The migrate tools of the app contract, without hosts: status parsing, rollback commands,
transactional defaults, expand/contract, and SQL over newer expand migrations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from deploykit.errors import ConfigError, TaskError
from deploykit.tasks import migrations
from deploykit.tasks.migrations import policy
from deploykit.tasks.migrations.sqlfiles import AppliedMigration, load_migrations
from deploykit.tasks.migrations.tools import (
    AlembicTool,
    CommandTool,
    DjangoTool,
    FlaskTool,
    MigrationState,
    ReleaseEnv,
    parse_alembic_history,
    parse_django_plan,
)

BASIC = Path(__file__).resolve().parent.parent / "fixtures" / "migrations" / "basic"
REL = ReleaseEnv("/srv/app/releases/v2")

SHOWMIGRATIONS = """\
[X]  contenttypes.0001_initial
[X]  auth.0001_initial
[X]  notes.0001_initial
[X]  contenttypes.0002_remove_content_type_name
[X]  notes.0002_note_done
[ ]  notes.0003_note_tags
[ ]  sessions.0001_initial
"""


def test_django_plan_lists_applied_and_pending_in_plan_order() -> None:
    state = parse_django_plan("Some warning line\n" + SHOWMIGRATIONS)
    assert state.applied == ("contenttypes.0001_initial", "auth.0001_initial",
                             "notes.0001_initial", "contenttypes.0002_remove_content_type_name",
                             "notes.0002_note_done")
    assert state.pending == ("notes.0003_note_tags", "sessions.0001_initial")


def test_django_applied_order_is_when_they_were_applied_not_the_plan_order() -> None:
    listing = ("auth\n [X] 0001_initial (applied at 2026-01-01 10:00:00)\n"
               "contenttypes\n [X] 0001_initial (applied at 2026-01-01 10:00:00)\n"
               " [X] 0002_remove_content_type_name (applied at 2026-01-01 10:00:00)\n"
               "notes\n [X] 0001_initial (applied at 2026-01-01 10:00:00)\n"
               " [X] 0002_note_done (applied at 2026-02-01 09:00:00)\n"
               "sessions\n [X] 0001_initial (applied at 2026-01-01 10:00:00)\n"
               "other\n (no migrations)\n")
    plan = SHOWMIGRATIONS.replace("[ ]", "[X]")
    state = parse_django_plan(plan, listing)
    assert state.applied[-1] == "notes.0002_note_done"
    assert state.applied[-2] == "sessions.0001_initial"  # same second: plan order
    assert DjangoTool().targets_of(state, 1) == ["notes.0002_note_done"]


def test_django_rollback_migrates_each_app_back_to_before_its_earliest_target() -> None:
    tool = DjangoTool()
    state = parse_django_plan(SHOWMIGRATIONS)
    targets = tool.targets_of(state, 2)
    assert targets == ["contenttypes.0002_remove_content_type_name", "notes.0002_note_done"]
    commands = tool.down_commands(REL, state, targets)
    py = "/srv/app/releases/v2/venv/bin/python manage.py"
    assert commands == [f"{py} migrate notes 0001_initial --noinput --no-color",
                        f"{py} migrate contenttypes 0001_initial --noinput --no-color"]
    assert tool.down_commands(REL, state, ["notes.0001_initial", "notes.0002_note_done"]) == \
        [f"{py} migrate notes zero --noinput --no-color"]
    with pytest.raises(TaskError, match=r"cannot roll back 9 migration\(s\): only 5 applied"):
        tool.targets_of(state, 9)


HISTORY = """\
c0ffee000002 -> c0ffee000003 (head), add notes.tags
c0ffee000001 -> c0ffee000002, add notes.title
<base> -> c0ffee000001, create notes
"""


@pytest.mark.parametrize(("current", "applied", "pending"), [
    ("", (), ("c0ffee000001", "c0ffee000002", "c0ffee000003")),
    ("c0ffee000002\n", ("c0ffee000001", "c0ffee000002"), ("c0ffee000003",)),
    ("INFO  [alembic.runtime.migration] Will assume non-transactional DDL.\n"
     "c0ffee000003 (head)\n", ("c0ffee000001", "c0ffee000002", "c0ffee000003"), ()),
])
def test_alembic_state_from_current_and_history(current: str, applied: tuple[str, ...],
                                                pending: tuple[str, ...]) -> None:
    state = parse_alembic_history(current, HISTORY)
    assert (state.applied, state.pending) == (applied, pending)


def test_alembic_history_with_a_merge_point() -> None:
    history = ("a1, b1 -> m1 (head) (mergepoint), merge\n<base> -> b1, b side\n"
               "<base> -> a1, a side\n")
    state = parse_alembic_history("a1\n", history)
    assert state.applied == ("a1",) and set(state.pending) == {"b1", "m1"}


def test_alembic_rollback_downgrades_once_below_the_oldest_target() -> None:
    tool = AlembicTool()
    state = parse_alembic_history("c0ffee000003\n", HISTORY)
    down = tool.down_commands(REL, state, tool.targets_of(state, 2))
    assert down == ["/srv/app/releases/v2/venv/bin/alembic -c alembic.ini downgrade "
                    "c0ffee000001"]
    assert tool.down_commands(REL, state, tool.targets_of(state, 3))[0].endswith(
        "downgrade base")
    assert tool.up_command(REL).endswith("alembic -c alembic.ini upgrade heads")


def test_flask_is_alembic_behind_flask_db() -> None:
    tool = FlaskTool(app="wsgi:app")
    assert tool.status_commands(REL) == [
        "/srv/app/releases/v2/venv/bin/flask --app wsgi:app db current",
        "/srv/app/releases/v2/venv/bin/flask --app wsgi:app db history"]
    assert tool.up_command(REL) == "/srv/app/releases/v2/venv/bin/flask --app wsgi:app db " \
                                   "upgrade heads"


def test_command_tool_reads_pending_lines_and_counts_its_down_steps() -> None:
    tool = CommandTool(up="./tool up", down="./tool down {steps}", pending="./tool pending",
                       applied="./tool applied")
    state = tool.parse(["0003_c\n\n0004_d\n", "0001_a\n0002_b\n"])
    assert state == MigrationState(("0001_a", "0002_b"), ("0003_c", "0004_d"))
    assert tool.down_commands(REL, state, tool.targets_of(state, 2)) == ["./tool down 2"]
    blind = CommandTool(up="u", down="d", pending="p")
    assert blind.down_commands(REL, MigrationState((), ()),
                               blind.targets_of(MigrationState((), ()), 3)) == ["d"] * 3


def test_the_status_script_reports_any_failing_status_command() -> None:
    script = AlembicTool().state_script(REL)
    assert script.count("|| dk_rc=$?") == 2 and script.startswith("dk_rc=0\n")
    assert "(cd -- /srv/app/releases/v2 && " in script


@pytest.mark.parametrize(("tool", "engine", "transactional"), [
    ("django", "postgres", True), ("django", "sqlite", True), ("alembic", "postgres", True),
    ("alembic", "sqlite", False), ("flask", "sqlite", False), ("command", "postgres", False),
])
def test_tool_for_defaults_transactional_by_tool_and_engine(tool: str, engine: str,
                                                            transactional: bool) -> None:
    spec = SimpleNamespace(tool=tool, up="u", down="d", pending="p", transactional=None)
    assert migrations.tool_for(spec, engine=engine).transactional is transactional
    spec.transactional = not transactional
    assert migrations.tool_for(spec, engine=engine).transactional is (not transactional)


def test_tool_for_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"migrate.tool: 'liquibase' is not one of sql, "):
        migrations.tool_for(SimpleNamespace(tool="liquibase"))
    with pytest.raises(ConfigError, match=r"migrate.down: a command is required"):
        migrations.tool_for(SimpleNamespace(tool="command", up="u", down="", pending="p"))
    with pytest.raises(ConfigError, match=r"needs database\.name"):
        migrations.tool_for(SimpleNamespace(tool="sql"))
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        DjangoTool().rollback(REL, 0)


def test_expand_only_newer_migrations_allow_older_code() -> None:
    kinds = {"notes.0002_note_done": "expand"}
    v = policy.judge(applied=["notes.0001_initial", "notes.0002_note_done"],
                     known=["notes.0001_initial"], kinds=kinds)
    assert v.allowed and v.newer == ("notes.0002_note_done",) and not v.needs_restore
    same = policy.judge(applied=["a"], known=["a"], kinds={})
    assert same.allowed and same.newer == ()


def test_a_contract_migration_refuses_older_code_unless_the_database_is_restored() -> None:
    args = {"applied": ["a", "b", "c"], "known": ["a"], "kinds": {"b": "expand"}}
    refused = policy.judge(**args)  # type: ignore[arg-type]
    assert not refused.allowed and refused.contract == ("c",)
    assert "predates contract migration(s) c" in refused.reason
    assert "--with-db-restore" in refused.reason
    restored = policy.judge(with_db_restore=True, **args)  # type: ignore[arg-type]
    assert restored.allowed and restored.needs_restore
    loose = policy.judge(default="expand", **args)  # type: ignore[arg-type]
    assert loose.allowed
    with pytest.raises(ConfigError, match=r"migrate.kinds\['b'\]: 'additive' is not one of"):
        policy.judge(applied=["b"], known=[], kinds={"b": "additive"})


def test_sql_pending_over_a_newer_releases_migrations_only_when_allowed(tmp_path: Path) -> None:
    older = tmp_path / "v1"
    older.mkdir()
    for f in BASIC.glob("000[12]_*.sql"):
        (older / f.name).write_bytes(f.read_bytes())
    found = load_migrations(BASIC)
    applied = {m.version: AppliedMigration(m.version, m.name, m.checksum) for m in found}
    v1 = load_migrations(older)
    with pytest.raises(TaskError, match="the database has migrations this directory does not"):
        migrations.pending_migrations(v1, applied)
    assert migrations.pending_migrations(v1, applied, allow_newer=True) == []
    task = migrations.migrate(older, database="app", allow_newer=True)
    assert task.allow_newer
