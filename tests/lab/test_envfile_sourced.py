"""A ``.env`` written by deploykit is inert when a shell sources it, and exact.

The file is sourced on a lab host with ``bash -c 'set -a; . ./.env'`` (what systemd
wrappers and entrypoints do); no command in a value runs (no file appears), and every
variable holds exactly the configured value.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from deploykit.connection import Connection
from deploykit.envfile import render_env_lines

pytestmark = pytest.mark.lab

DIR = "/srv/dk-envfile-test"
VALUES = {
    "SUBST": f"$(touch {DIR}/pwned-subst)",
    "BACKTICK": f"`touch {DIR}/pwned-backtick`",
    "SEMI": f"x; touch {DIR}/pwned-semi",
    "AMP": f"x && touch {DIR}/pwned-amp",
    "VAR": "$HOME $$ $0 $",
    "SPACES": "  two  words  ",
    "QUOTE": "it's",
    "DOUBLE": "say \"hi\"",
    "HASH": "a #b",
    "GLOB": "*",
    "TILDE": "~root",
    "UNICODE": "ünïcödé ✓",
    "EMPTY": "",
}


def test_sourcing_the_env_file_runs_nothing_and_reads_exact_values(
        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    conn.run(["mkdir", "-p", DIR])
    try:
        conn.put(render_env_lines(VALUES), f"{DIR}/.env")
        names = " ".join(VALUES)
        out = conn.run(f"cd {DIR} && env -i bash --norc --noprofile -c "
                       f"'set -a; . ./.env; set +a; for n in {names}; do "
                       "printf \"%s=%s\\0\" \"$n\" \"${!n}\"; done'").stdout_bytes
        got = dict(item.split("=", 1) for item in out.decode().split("\0") if item)
        assert got == VALUES
        assert conn.run(["ls", "-A", DIR]).stdout.split() == [".env"]
    finally:
        conn.run(["rm", "-rf", DIR])
