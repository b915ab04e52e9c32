"""The app's settings: the release's version files and the shared ``.env``.

A release directory holds ``VERSION`` (``v2``) and ``release.toml`` (what this
version does differently: ``features``, ``fault``, ``delay_ms``), both written
by ``deploykit.artifacts``. Run from the source tree, neither exists and the
version is ``dev`` with every feature on and no fault.

Settings come from ``.env`` in the working directory (the release's link to
``/srv/<app>/shared/.env``; ``APP_ENV_FILE`` names another file), and the
process environment overrides the file: two colours sharing one ``.env`` get
their own ``PORT`` from their supervisor program's environment.

=====================  ======================================================
``DATABASE_URL``       libpq URI, ``postgresql://user:password@host:5432/db``
                       (password percent-encoded)
``REDIS_URL``          ``redis://host:6379/0``
``PORT``               port gunicorn binds on 0.0.0.0 (8000)
``DISK_MIN_FREE_MB``   the disk check fails below this much free space (64)
``DISK_PATH``          where the disk check looks (the working directory)
``RELEASE_ID``         shown by /version (default: the release directory name)
=====================  ======================================================
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FAULTS = ("", "health", "slow", "crash")


@dataclass(frozen=True)
class Release:
    """What this build is: its version and the behaviour its ``release.toml`` selects."""

    version: str = "dev"
    features: frozenset[str] = frozenset({"notes"})
    fault: str = ""
    delay_ms: int = 0
    release_id: str = ""

    def has(self, feature: str) -> bool:
        """True when this version ships ``feature``."""
        return feature in self.features


@dataclass(frozen=True)
class Settings:
    """Connection settings and thresholds, from ``.env`` and the environment."""

    database_url: str = ""
    redis_url: str = ""
    port: int = 8000
    disk_min_free_mb: int = 64
    disk_path: str = "."


def parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments, blank lines and ``export`` are allowed, and
    a value in matching single or double quotes loses them."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_release(root: Path) -> Release:
    """Read ``VERSION`` and ``release.toml`` from the release directory ``root``."""
    version_file = root / "VERSION"
    if not version_file.exists():
        return Release(release_id=os.environ.get("RELEASE_ID", "dev"))
    spec = {}
    spec_file = root / "release.toml"
    if spec_file.exists():
        spec = tomllib.loads(spec_file.read_text())
    fault = str(spec.get("fault", ""))
    if fault not in FAULTS:
        raise ValueError(f"release.toml: unknown fault {fault!r} (one of {FAULTS})")
    return Release(
        version=version_file.read_text().strip(),
        features=frozenset(spec.get("features", [])),
        fault=fault,
        delay_ms=int(spec.get("delay_ms", 0)),
        release_id=os.environ.get("RELEASE_ID", root.resolve().name),
    )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the ``.env`` file overridden by ``environ`` (``os.environ``)."""
    env = dict(os.environ if environ is None else environ)
    path = Path(env.get("APP_ENV_FILE", ".env"))
    values = parse_env(path.read_text()) if path.exists() else {}
    values.update(env)
    return Settings(
        database_url=values.get("DATABASE_URL", ""),
        redis_url=values.get("REDIS_URL", ""),
        port=int(values.get("PORT", "8000")),
        disk_min_free_mb=int(values.get("DISK_MIN_FREE_MB", "64")),
        disk_path=values.get("DISK_PATH", "."),
    )
