"""Local run files: ``.deploykit/runs/<id>.json`` and ``.log`` (0600, redacted)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deploykit.errors import ConfigError
from deploykit.journal.ids import RUNS_DIR, _check_deploy_id
from deploykit.result import RunReport
from deploykit.secrets import Secret, redact

log = logging.getLogger("deploykit.journal")

# -- local run files --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """Where one deploy's files go on the controller."""

    json: Path
    log: Path


def run_files(deploy_id: str, base: str | os.PathLike[str] = RUNS_DIR) -> RunFiles:
    """``<base>/<deploy_id>.json`` and ``.log`` (``base`` defaults to ``.deploykit/runs``)."""
    _check_deploy_id(deploy_id)
    root = Path(base)
    return RunFiles(json=root / f"{deploy_id}.json", log=root / f"{deploy_id}.log")


def write_run_report(report: RunReport, deploy_id: str | None = None,
                     base: str | os.PathLike[str] = RUNS_DIR) -> Path:
    """Write the run report to ``.deploykit/runs/<deploy_id>.json`` (0600, atomic, redacted).

    ``deploy_id`` defaults to the report's ``run_id`` (give the runner
    ``run_id=deploy_id``).
    """
    return report.write_json(run_files(deploy_id or report.run_id, base).json)


LOG_LEVEL_ENV = "DEPLOYKIT_LOG_LEVEL"


def log_level() -> int:
    """``$DEPLOYKIT_LOG_LEVEL`` (``debug``, ``info``, ``warning``) as a logging level;
    WARNING when unset. An unknown name is a ConfigError."""
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().lower()
    levels = {"": logging.WARNING, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR}
    if name not in levels:
        raise ConfigError(f"${LOG_LEVEL_ENV}: {name!r} is not one of debug, info, warning, "
                          f"error")
    return levels[name]


class _RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: set[Secret]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class RunLog:
    """The run's log file: deploykit's log records for one deploy, secrets redacted.

    >>> with RunLog(run_files(deploy_id).log, secrets=[token]) as run_log:  # doctest: +SKIP
    ...     run_log.write("deploy started")

    While open, records of the ``deploykit`` logger at ``level`` and above
    (``logging.DEBUG`` adds every remote command; the default is INFO, or DEBUG with
    ``$DEPLOYKIT_LOG_LEVEL=debug``, see :func:`log_level`) go to the file, created
    0600; every line passes through :func:`~deploykit.secrets.redact` with
    the given secrets (add more with :meth:`add_secrets`).
    """

    def __init__(self, path: str | os.PathLike[str], *, secrets: Iterable[Secret] = (),
                 level: int | None = None) -> None:
        self.path = Path(path)
        self.level = min(log_level(), logging.INFO) if level is None else level
        self.secrets: set[Secret] = set(secrets)
        self._handler: logging.Handler | None = None
        self._previous_level = logging.NOTSET
        self._logger = logging.getLogger("deploykit")

    def add_secrets(self, secrets: Iterable[Secret]) -> None:
        """Redact these values too from now on."""
        self.secrets.update(secrets)

    def write(self, message: str) -> None:
        """Add one line to the log (redacted), logged at INFO on ``deploykit.journal``
        (so written when ``level`` is INFO or lower)."""
        log.info("%s", message)

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setLevel(self.level)
        handler.setFormatter(_RedactingFormatter(self.secrets))
        self._handler = handler
        self._previous_level = self._logger.level
        if self._logger.getEffectiveLevel() > self.level:
            self._logger.setLevel(self.level)
        self._logger.addHandler(handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
            self._logger.setLevel(self._previous_level)
