"""Building remote shell commands safely.

Every value that reaches a remote shell goes through :func:`quote`. A command
given as a list is quoted element by element with :func:`join`; a
:class:`~deploykit.secrets.Secret` element is revealed only in the command that
is sent, and shown as ``********`` in :func:`join_redacted` (what is logged).

A NUL byte cannot be passed in a command line (the remote ``sh -c`` would cut
the command there, possibly inside a quoted word), so :func:`quote` refuses a
value holding one with a :class:`~deploykit.errors.ConfigError`, and
:func:`check_no_nul` does the same for a ready command string.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from deploykit.errors import ConfigError
from deploykit.secrets import REDACTED, Secret

Arg = str | int | Secret
Command = str | Sequence[Arg]


def check_no_nul(text: str, what: str = "value", *, shown: str | None = None) -> str:
    """Return ``text``; raise ConfigError when it holds a NUL byte (``shown``: how to
    name it in the message instead of the text itself, e.g. for a secret)."""
    if "\x00" in text:
        if shown is None:
            shown = repr(text if len(text) <= 80 else text[:77] + "...")
        raise ConfigError(f"{what} {shown} contains a NUL byte (\\x00), which cannot be "
                          "passed to a remote shell; remove it")
    return text


def quote(value: Arg) -> str:
    """Shell-quote one value (a Secret is revealed: use only in the sent command).

    A value holding a NUL byte raises :class:`ConfigError`.
    """
    if isinstance(value, Secret):
        return shlex.quote(check_no_nul(value.reveal(), "secret value", shown=REDACTED))
    return shlex.quote(check_no_nul(str(value)))


def join(argv: Iterable[Arg]) -> str:
    """Quote and join an argument list into one command line."""
    return " ".join(quote(a) for a in argv)


def join_redacted(argv: Iterable[Arg]) -> str:
    """Like :func:`join`, but every Secret shows as ``********`` (for logs and reports)."""
    return " ".join(REDACTED if isinstance(a, Secret) else quote(a) for a in argv)


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
