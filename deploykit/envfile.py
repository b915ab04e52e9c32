"""Writing ``.env`` files that every reader understands the same way, and none executes.

An app's ``.env`` is read by very different parsers: a POSIX shell sourcing it
(``set -a; . .env`` in a systemd wrapper or an entrypoint), python-dotenv,
docker compose (compose-go's dotenv parser) and systemd's ``EnvironmentFile=``.
Their rules agree only on a common subset, which :func:`env_line` writes:

* **bare** (``KEY=value``) when the value holds only letters, digits and
  ``_ . / : @ % + , = -``: no reader treats any of them specially;
* otherwise in **single quotes** (``KEY='two words'``): literal for a shell (no
  ``$``, backtick or ``$(...)`` expansion: sourcing is inert), for systemd and
  compose; python-dotenv reads ``\\\\`` and ``\\'`` as escapes inside them, so a
  value with two backslashes in a row or ending in one is refused;
* a value holding a single quote goes in **double quotes** instead
  (``KEY="it's"``), allowed only when it holds none of ``" \\ $ `` `` ` ``: the
  characters a shell, python-dotenv, compose or systemd expand or unescape there;
* ``${`` is refused in any value: python-dotenv expands ``${NAME}`` even inside
  single quotes, and has no escape for it;
* anything else is refused with a :class:`~deploykit.errors.ConfigError` naming
  the key (never the value, which may be secret): ``${``, a line break of any kind (every
  character :meth:`str.splitlines` honours: ``\\r`` too, which a reader splitting
  on it would turn into a second variable), a NUL byte, a single quote together
  with one of those four characters, an invalid name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from deploykit.errors import ConfigError

__all__ = ["LINE_BREAKS", "env_line", "render_env_lines"]

LINE_BREAKS = {
    "\n": "a line feed (\\n)",
    "\r": "a carriage return (\\r)",
    "\v": "a vertical tab (\\v)",
    "\f": "a form feed (\\f)",
    "\x1c": "a file separator (\\x1c)",
    "\x1d": "a group separator (\\x1d)",
    "\x1e": "a record separator (\\x1e)",
    "\x85": "a next-line character (\\x85)",
    "\u2028": "a line separator (\\u2028)",
    "\u2029": "a paragraph separator (\\u2029)",
}
"""Every character :meth:`str.splitlines` breaks a line at, and how to name it."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]+")
_DOUBLE_QUOTE_SPECIAL = set('"\\$`')


def _check(key: str, value: str, where: str) -> None:
    if not _NAME.fullmatch(key):
        raise ConfigError(f"{where}: {key!r} is not a valid environment variable name "
                          "(letters, digits and _, not starting with a digit)")
    for char, name in LINE_BREAKS.items():
        if char in value:
            raise ConfigError(f"{where} holds a line break ({name}); a .env value must be "
                              "one line: remove it")
    if "\x00" in value:
        raise ConfigError(f"{where} holds a NUL byte (\\x00), which no environment variable "
                          "can carry: remove it")


def env_line(key: str, value: str, *, where: str | None = None) -> str:
    """The ``KEY=value`` line for ``value``, quoted as the module docstring says.

    ``where`` names the setting in errors (``deploykit.yml: env.SECRET_KEY``); the value
    itself is never shown. ConfigError when it cannot be written safely.
    """
    where = where or f"env.{key}"
    _check(key, value, where)
    if not value:
        return f"{key}="
    if "${" in value:
        raise ConfigError(f"{where}: a value holding ${{ is expanded by python-dotenv in any "
                          "quoting (it has no escape for it); change the value (a lone $ "
                          "is fine)")
    if _BARE.fullmatch(value):
        return f"{key}={value}"
    if "'" not in value:
        if "\\\\" in value or value.endswith("\\"):
            raise ConfigError(f"{where}: a value with two backslashes in a row or ending in "
                              "one is read differently by python-dotenv and a shell; change "
                              "the value")
        return f"{key}='{value}'"
    if not _DOUBLE_QUOTE_SPECIAL & set(value):
        return f'{key}="{value}"'
    raise ConfigError(f"{where}: a value holding a single quote (') together with one of "
                      "\" \\ $ ` cannot be written to .env so that a shell, python-dotenv, "
                      "docker compose and systemd all read it the same way (and sourcing it "
                      "runs nothing); change the value")


def render_env_lines(values: Mapping[str, str], *, where: str = "env") -> str:
    """The ``.env`` text for ``values`` (one :func:`env_line` each, in order); ``where``
    prefixes each key in errors (``deploykit.yml: env``)."""
    return "".join(env_line(k, v, where=f"{where}.{k}") + "\n" for k, v in values.items())
