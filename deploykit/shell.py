"""Building remote shell commands safely.

Every value that reaches a remote shell goes through :func:`quote`. A command
given as a list is quoted element by element with :func:`join`; a
:class:`~deploykit.secrets.Secret` element is revealed only in the command that
is sent, and shown as ``********`` in :func:`join_redacted` (what is logged).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from deploykit.secrets import REDACTED, Secret

Arg = str | int | Secret
Command = str | Sequence[Arg]


def quote(value: Arg) -> str:
    """Shell-quote one value (a Secret is revealed: use only in the sent command)."""
    if isinstance(value, Secret):
        return shlex.quote(value.reveal())
    return shlex.quote(str(value))


def join(argv: Iterable[Arg]) -> str:
    """Quote and join an argument list into one command line."""
    return " ".join(quote(a) for a in argv)


def join_redacted(argv: Iterable[Arg]) -> str:
    """Like :func:`join`, but every Secret shows as ``********`` (for logs and reports)."""
    return " ".join(REDACTED if isinstance(a, Secret) else shlex.quote(str(a)) for a in argv)


def secrets_in(command: Command) -> list[Secret]:
    """The Secrets inside a list command (a string command carries none)."""
    if isinstance(command, str):
        return []
    return [a for a in command if isinstance(a, Secret)]


def render(command: Command) -> tuple[str, str]:
    """Return ``(to_send, to_log)`` for a command given as a string or an argument list."""
    if isinstance(command, str):
        return command, command
    return join(command), join_redacted(command)
