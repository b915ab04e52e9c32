"""``.env`` lines: no line break of any kind gets in, and every reader sees the same value.

Readers: a POSIX shell sourcing the file (``set -a; . .env``, in systemd wrappers),
python-dotenv, docker compose (compose-go's dotenv) and systemd's EnvironmentFile. A
value is written bare when it holds only characters none of them treats specially,
in single quotes (literal for all four) otherwise, in double quotes when it holds a
single quote and nothing a double-quote reader expands; anything else is refused.
"""

from __future__ import annotations

import io

import pytest

from deploykit.envfile import LINE_BREAKS, env_line, render_env_lines
from deploykit.errors import ConfigError

dotenv = pytest.importorskip("dotenv")

TRICKY = [
    "plain-value_1.2:3@host/db,x=y%z+",
    "two words",
    "$(touch /tmp/dk-pwned)",
    "`touch /tmp/dk-pwned`",
    "$HOME and $$ and $",
    "a;b && c | d > e < f",
    "#not a comment",
    "value # with hash",
    "tab\tinside",
    "  leading and trailing  ",
    "it's",
    "say \"hi\"",
    "C:\\path\\to",
    "*?[glob]~",
    "ünïcödé ✓",
    "",
]


@pytest.mark.parametrize("value", TRICKY)
def test_python_dotenv_reads_the_exact_value(value: str) -> None:
    line = env_line("KEY", value)
    parsed = dotenv.dotenv_values(stream=io.StringIO(line + "\n"))
    assert parsed == {"KEY": value}, line


@pytest.mark.parametrize("brk", sorted(LINE_BREAKS))
def test_every_line_break_is_refused_and_the_value_not_shown(brk: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_line("INJ", f'secret-part"{brk}DISK_MIN_FREE_MB=999999999',
                 where="deploykit.yml: env.INJ")
    message = str(info.value)
    assert "deploykit.yml: env.INJ" in message and "line break" in message
    assert "secret-part" not in message and "DISK_MIN" not in message


def test_line_breaks_are_those_str_splitlines_honours() -> None:
    honoured = {chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1}
    assert honoured == set(LINE_BREAKS)


def test_a_nul_byte_is_refused() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        env_line("K", "a\x00b")


@pytest.mark.parametrize("value", ["it's $HOME", "it's \"quoted\"", "it's a \\ path",
                                   "it's `cmd`"])
def test_a_value_no_quoting_keeps_identical_everywhere_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_line("K", value, where="deploykit.yml: env.K")
    assert "deploykit.yml: env.K" in str(info.value)
    assert value not in str(info.value)


@pytest.mark.parametrize("value", ["ends with \\", "double \\\\ backslash"])
def test_backslashes_dotenv_would_read_differently_are_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        env_line("K", value)


def test_a_dollar_brace_is_refused_as_python_dotenv_expands_it_in_any_quoting() -> None:
    with pytest.raises(ConfigError, match="python-dotenv"):
        env_line("K", "${HOME}")


@pytest.mark.parametrize("key", ["", "1ABC", "A-B", "A B", "A=B", "Ä"])
def test_invalid_names_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        env_line(key, "v")


def test_render_env_lines_joins_lines() -> None:
    assert render_env_lines({"A": "1", "B": "x y"}) == "A=1\nB='x y'\n"
