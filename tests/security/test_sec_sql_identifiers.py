"""No SQL is built by string formatting from values: identifiers go through
``psycopg.sql.Identifier``, values through ``sql.Literal`` or query parameters.

Scans the modules that talk to PostgreSQL for SQL text built with f-strings,
``%``, ``+`` or ``str.format`` from anything but constants. (The lab test in
test_sec_shell_values.py creates a database and a role named with SQL
metacharacters and finds them under that exact name.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["deploykit/pg.py", "deploykit/tasks/postgres.py", "deploykit/tasks/migrations/sql.py",
           "deploykit/tasks/migrations/tools.py",
           "deploykit/journal.py", "deploykit/invoke.py", "deploykit/strategies/bluegreen.py"]
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|GRANT|REVOKE|COMMENT|"
                 r"TRUNCATE|VACUUM|ANALYZE|LOCK|COPY|WITH)\b|\b(FROM|INTO|TABLE|DATABASE|ROLE)"
                 r"\s+\{")
# Reviewed exceptions, (module, a piece of the flagged source), each with its reason:
REVIEWED = {
    # plan lines and messages that show SQL to people, built from sql.Identifier(...)
    # .as_string(): never executed
    ("deploykit/tasks/postgres.py", "CREATE ROLE {role.as_string(None)} WITH {shown}"),
    ("deploykit/tasks/postgres.py", "ALTER ROLE {who} WITH {old_shown}"),
    ("deploykit/tasks/postgres.py", "{verb} ROLE {who} WITH {shown}"),
    ("deploykit/tasks/postgres.py", "(fix: ALTER DATABASE {old.as_string(None)}"),
    # a constant subquery picked from the module's own table by the validated object type
    ("deploykit/tasks/postgres.py", "_ACL_OBJECTS[self.on]"),
    # column names joined from the module's constant _ROLE_FLAGS
    ("deploykit/tasks/postgres.py", "SELECT {columns}, rolconnlimit FROM pg_roles"),
}


def _text(node: ast.JoinedStr) -> str:
    return "".join(str(v.value) if isinstance(v, ast.Constant) else
                   "{" + ast.unparse(v.value) + "}" for v in node.values
                   if isinstance(v, ast.Constant | ast.FormattedValue))


def _findings(path: str, root: Path = ROOT) -> list[str]:
    tree = ast.parse((root / path).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and SQL.search(_text(node)):
            kind = "f-string SQL"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "format" and isinstance(node.func.value, ast.Constant) \
                and isinstance(node.func.value.value, str) and SQL.search(node.func.value.value):
            kind = "str.format SQL"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add) \
                and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) \
                and SQL.search(node.left.value):
            kind = "SQL joined with % or +"
        else:
            continue
        source = _text(node) if isinstance(node, ast.JoinedStr) else ast.unparse(node)
        if any(p == path and piece in source for p, piece in REVIEWED):
            continue
        found.append(f"{path}:{node.lineno}: {kind}: {source[:100]}")
    return found


@pytest.mark.parametrize("path", MODULES)
def test_no_sql_is_built_from_values_by_string_formatting(path: str) -> None:
    assert _findings(path) == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner is not blind: it flags each way of formatting a value into SQL."""
    (tmp_path / "sample.py").write_text('db = "x"\n'
                      'a = f"DROP DATABASE {db}"\n'
                      'b = "CREATE DATABASE {}".format(db)\n'
                      'c = "SELECT * FROM t WHERE n = " + db\n'
                      'd = f"SELECT {columns} FROM pg_roles"\n')
    found = _findings("sample.py", tmp_path)
    assert [f.split(": ")[1] for f in found] == [
        "f-string SQL", "str.format SQL", "SQL joined with % or +", "f-string SQL"]
