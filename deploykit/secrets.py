"""Secrets: values that must never reach a log, a report or an error message."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "********"


class Secret:
    """A secret value whose ``str`` and ``repr`` are redacted.

    Read the real value with :meth:`reveal` at the last moment (when building
    the remote command or the file content); everything that formats a
    ``Secret`` for people sees ``********``.

    >>> s = Secret("hunter2")
    >>> str(s), repr(s), s.reveal()
    ('********', 'Secret(********)', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = str(value)

    def reveal(self) -> str:
        """Return the real value. Only for building commands and files."""
        return self._value

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)


def reveal(value: object) -> object:
    """Return ``value`` with a top-level :class:`Secret` revealed; other values unchanged."""
    return value.reveal() if isinstance(value, Secret) else value


def redact(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every occurrence of each secret's value in ``text`` with ``********``.

    Used on remote output and error messages before they are logged or
    reported, in case a command echoed a secret back.
    """
    values = sorted({s.reveal() for s in secrets if s.reveal()}, key=len, reverse=True)
    if not values:
        return text
    pattern = re.compile("|".join(re.escape(v) for v in values))
    return pattern.sub(REDACTED, text)
