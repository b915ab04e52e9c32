"""Deploy ids, the app state directory, the result names (shared by the journal)."""

from __future__ import annotations

import getpass
import logging
import os
import re
import secrets as _random
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from deploykit.errors import ConfigError

log = logging.getLogger("deploykit.journal")


STATE_ROOT = "/var/lib/deploykit"
"""Where each app's lock and history live on a host: ``STATE_ROOT/<app>/``."""
RUNS_DIR = Path(".deploykit/runs")
"""Where run reports and run logs go on the controller (relative to the working dir)."""
DEFAULT_LOCK_TTL = 3600.0
"""Seconds after which a lock counts as stale. Keep it above your longest deploy."""
DEPLOY_ID_ENV = "DEPLOYKIT_DEPLOY_ID"
"""Set by a deploy for the processes it starts (hooks): the lock is re-entrant for it."""
NEST_TOKEN_ENV = "DEPLOYKIT_LOCK_TOKEN"
"""Set by a run for its hooks only: the proof that a run started by a hook is nested in
the run holding the lock (``$DEPLOYKIT_DEPLOY_ID`` alone, shown by ``invoke status``, is
not: any process could set it)."""
FUTURE_TOLERANCE = 120
"""Seconds a lock's time may lie in the future of the host's clock (clock skew between a
heartbeat and now) before it counts as stale."""
HEARTBEAT_MAX = 60.0
"""Seconds between two refreshes of a held lock at most (a third of the TTL when shorter)."""
RESULTS = ("succeeded", "failed", "rolled_back", "aborted")
"""The results an ``end`` history entry may carry."""
DeployResult = Literal["succeeded", "failed", "rolled_back", "aborted"]
Kind = Literal["deploy", "rollback", "maintenance", "prune"]
"""What holds a lock: deploys and rollbacks record start/end entries; maintenance and prune
(``record=False``) write their own."""

_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_LINE_LIMIT = 60 * 1024  # bytes per history line; longer ones lose their details
_BLOCK = "1M"  # dd block size: larger than every line we write, so one write(2)
_GUARD_WAIT = 20  # seconds to wait for another lock script on the same host
_COMMAND_TIMEOUT = 60.0
_T = TypeVar("_T")


# -- deploy id --------------------------------------------------------------------------------


def new_deploy_id(repo_dir: str | os.PathLike[str] = ".", *, now: datetime | None = None) -> str:
    """A deploy id: UTC time to the second, its milliseconds, the short git commit of
    ``repo_dir``, a random part.

    ``20261125T173000Z-042-abc1234-3f9a``; ``20261125T173000Z-042-nogit-3f9a`` when
    ``repo_dir`` is not a git work tree (or has no commit, or git is missing).
    Sorted by name, ids are sorted by time (to the millisecond: what ``--retry-failed``
    relies on to find the last deploy); safe as a file name; two deploys started in
    the same second never share one (their run reports would overwrite each other).
    """
    when = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    try:
        out = subprocess.run(["git", "-C", os.fspath(repo_dir), "rev-parse", "--short=7", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        sha = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        sha = ""
    commit = sha if re.fullmatch(r"[0-9a-f]{4,40}", sha) else "nogit"
    return f"{stamp}-{when.microsecond // 1000:03d}-{commit}-{_random.token_hex(2)}"


def outer_deploy_id() -> str | None:
    """The deploy this process runs inside of (``$DEPLOYKIT_DEPLOY_ID``), if any."""
    value = os.environ.get(DEPLOY_ID_ENV, "").strip()
    return value if value and _DEPLOY_ID.match(value) else None


def nest_proof() -> str:
    """The nest token this process was given by the run it is part of (hooks only)."""
    return os.environ.get(NEST_TOKEN_ENV, "").strip()


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> tuple[str, str]:
    """``(user, controller host)`` of this process."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = str(os.getuid())
    return user, socket.gethostname()


def _check_app(app: str) -> str:
    if not isinstance(app, str) or not _APP.match(app) or app in (".", ".."):
        raise ConfigError(f"invalid app name {app!r}: 1-64 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit")
    return app


def _check_deploy_id(deploy_id: str) -> str:
    if not isinstance(deploy_id, str) or not _DEPLOY_ID.match(deploy_id):
        raise ConfigError(f"invalid deploy id {deploy_id!r}: letters, digits, '.', '_' or '-'")
    return deploy_id


def state_dir(app: str) -> str:
    """``/var/lib/deploykit/<app>``: the app's lock and history on a host."""
    return f"{STATE_ROOT}/{_check_app(app)}"


