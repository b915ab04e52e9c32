"""Where a command acts: ``--host``, ``--group``, ``--environment`` and ``--inventory``,
the same on every command (:func:`selects` adds them to a task)."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

from invoke.context import Context

from deploykit import journal
from deploykit.cli.output import LOGGED_SECRETS
from deploykit.pipeline.project import Project, config_path
from deploykit.secrets import redact

__all__ = ["SELECT", "cli_logging", "project_of", "selects"]

SELECT = {
    "host": "only these web hosts (a selector: web-1 or web-1,web-2)",
    "group": "only this group of web hosts (default: web from deploykit.yml)",
    "environment": "the environment: deploykit.<environment>.yml on top of deploykit.yml "
                   "(default: $DEPLOYKIT_ENV)",
    "inventory": "use this inventory file instead of the configured one",
}
"""The help of the options every command takes to say where it acts."""


def project_of(c: Context, host: str | None = None, group: str | None = None,
               environment: str | None = None, inventory: str | None = None) -> Project:
    """The project a command acts on (``deploykit.yml`` as :func:`config_path` finds it)."""
    cli_logging()
    return Project.load(config_path(c), host=host, group=group, environment=environment,
                        inventory=inventory)


def selects(func: Callable[..., None]) -> Callable[..., None]:
    """Turn ``func(c, project, **options)`` into an invoke task body that also takes
    ``--host``, ``--group``, ``--environment`` and ``--inventory`` and loads the project
    from them."""
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    extra = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                               annotation="str | None") for name in SELECT]

    @functools.wraps(func)
    def body(c: Context, *args: Any, host: str | None = None, group: str | None = None,
             environment: str | None = None, inventory: str | None = None,
             **options: Any) -> None:
        func(c, project_of(c, host, group, environment, inventory), *args, **options)

    body.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[params[0], *params[2:], *extra])
    return body


class _Warnings(logging.Handler):
    """deploykit's warnings (with ``$DEPLOYKIT_LOG_LEVEL=debug``: every record) on stderr
    as ``warning: ...``/``debug: ...``, secrets redacted (not the CLI's own lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("deploykit.cli"):
            label = "warning" if record.levelno >= logging.WARNING else \
                record.levelname.lower()
            sys.stderr.write(f"{label}: {redact(record.getMessage(), LOGGED_SECRETS)}\n")


def cli_logging() -> None:
    """deploykit's warnings on stderr (``$DEPLOYKIT_LOG_LEVEL``: more)."""
    root = logging.getLogger("deploykit")
    level = journal.log_level()
    if not any(isinstance(h, _Warnings) for h in root.handlers):
        root.addHandler(_Warnings(min(level, logging.WARNING)))
    if level < logging.WARNING:
        root.setLevel(level)
