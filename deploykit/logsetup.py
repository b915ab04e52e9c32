"""Logging for plain scripts: :func:`configure_logging`, secrets redacted.

deploykit logs on the ``deploykit`` logger (``deploykit.connection`` logs every
remote command at DEBUG, already redacted; ``deploykit.notify`` warns about
undelivered notifications, ...) and, like any library, sets up no handler of its
own. A script that wants to see it calls::

    import deploykit

    deploykit.configure_logging()                 # level from $DEPLOYKIT_LOG_LEVEL
    deploykit.configure_logging("debug", secrets=[token])

Every line passes through :func:`deploykit.secrets.redact` with the secrets given
(here or later with :func:`add_secrets`), and Secret arguments print as
``********`` anyway. The invoke front end uses the same level rule.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import IO

from deploykit.errors import ConfigError
from deploykit.secrets import Secret, redact

__all__ = ["FORMAT", "LOG_LEVEL_ENV", "add_secrets", "configure_logging", "log_level"]

LOG_LEVEL_ENV = "DEPLOYKIT_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def log_level(name: str | int | None = None) -> int:
    """A level from ``name`` (``debug``, ``info``, ``warning``, ``error``, or a number),
    else from ``$DEPLOYKIT_LOG_LEVEL``; WARNING when neither says. An unknown name
    is a ConfigError naming where it came from."""
    if isinstance(name, bool) or not isinstance(name, str | int | None):
        raise ConfigError(f"log level: {name!r} is not one of debug, info, warning, error")
    if isinstance(name, int):
        return name
    where = "log level" if name is not None else f"${LOG_LEVEL_ENV}"
    text = (name if name is not None else os.environ.get(LOG_LEVEL_ENV, "")).strip().lower()
    if not text:
        return logging.WARNING
    if text not in _LEVELS:
        raise ConfigError(f"{where}: {text!r} is not one of debug, info, warning, error")
    return _LEVELS[text]


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose every line is redacted of its secrets."""

    def __init__(self, stream: IO[str] | None = None, secrets: Iterable[Secret] = ()) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.secrets: set[Secret] = set(secrets)
        self.setFormatter(logging.Formatter(FORMAT))

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def _handler() -> RedactingHandler | None:
    return next((h for h in logging.getLogger("deploykit").handlers
                 if isinstance(h, RedactingHandler)), None)


def configure_logging(level: str | int | None = None, *, secrets: Iterable[Secret] = (),
                      stream: IO[str] | None = None) -> logging.Handler:
    """Show deploykit's log records at ``level`` (default: ``$DEPLOYKIT_LOG_LEVEL``,
    else WARNING) on ``stream`` (stderr), each line redacted of ``secrets``.

    Calling it again changes the level (and adds secrets) instead of adding a second
    handler. Returns the handler (remove it from ``logging.getLogger("deploykit")``
    to undo). A bad level is a ConfigError.
    """
    wanted = log_level(level)
    logger = logging.getLogger("deploykit")
    handler = _handler()
    if handler is None:
        handler = RedactingHandler(stream, secrets)
        logger.addHandler(handler)
    else:
        handler.secrets.update(secrets)
        if stream is not None:
            handler.setStream(stream)
    handler.setLevel(wanted)
    logger.setLevel(wanted)
    return handler


def add_secrets(secrets: Iterable[Secret]) -> None:
    """Redact these values too in what :func:`configure_logging` shows from now on."""
    handler = _handler()
    if handler is not None:
        handler.secrets.update(secrets)
