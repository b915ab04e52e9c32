"""The project: deploykit.yml, its inventory, the hosts a command acts on, the artifact."""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke.context import Context

from deploykit import artifacts
from deploykit.artifacts import Artifact
from deploykit.config import (
    AppEnv,
    DeployConfig,
    merge_config,
    parse_config,
    read_config_data,
)
from deploykit.config import render_env as _render_env
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.pg import PgSettings
from deploykit.pipeline.events import Display
from deploykit.secrets import Secret
from deploykit.tasks import notify
from deploykit.tasks.releases import ReleaseInfo

log = logging.getLogger("deploykit.pipeline.project")

CONFIG_ENV = "DEPLOYKIT_CONFIG"
"""Environment variable naming the deploykit.yml to use (default: ./deploykit.yml)."""
# == the project ==============================================================================


ENV_VAR = "DEPLOYKIT_ENV"
"""The environment to use when no ``-e/--environment`` is given (``production``)."""
_ENV_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")


def environment_file(path: Path, environment: str) -> Path:
    """``deploykit.<environment>.yml`` beside ``deploykit.yml``."""
    if not _ENV_NAME.match(environment):
        raise ConfigError(f"invalid environment {environment!r}: 1-32 lower-case letters, "
                          f"digits, '-' or '_', starting with a letter")
    return path.with_name(f"{path.stem}.{environment}{path.suffix}")


def environments(path: Path) -> list[str]:
    """The environments that have an override file beside ``path``."""
    found = path.parent.glob(f"{path.stem}.*{path.suffix}")
    names = [f.name[len(path.stem) + 1:-len(path.suffix)] for f in found]
    return sorted(n for n in names if _ENV_NAME.match(n))


def load_environment(path: str | os.PathLike[str], environment: str | None = None,
                     inventory: str | os.PathLike[str] | None = None) -> DeployConfig:
    """``deploykit.yml`` with ``deploykit.<environment>.yml``'s keys on top (default
    environment: ``$DEPLOYKIT_ENV``; none: the base file alone). An environment's file
    must name its own inventory (a production deploy never falls back to the lab's).
    ``inventory`` (``--inventory PATH``, relative to the working directory) replaces the
    inventory of either."""
    base = Path(path).resolve()
    data = read_config_data(base)
    name = environment or os.environ.get(ENV_VAR) or None
    if name:
        extra = environment_file(base, name)
        if not extra.exists():
            known = ", ".join(environments(base)) or "none"
            raise ConfigError(f"environment {name!r}: {extra} does not exist (environments "
                              f"beside {base.name}: {known})")
        override = read_config_data(extra)
        if "inventory" not in override and inventory is None:
            raise ConfigError(f"{extra}: an environment names its own inventory (inventory: "
                              f"inventories/{name}.yml)")
        data = merge_config(data, override)
    if inventory is not None:
        data["inventory"] = str(Path(inventory).resolve())
    return parse_config(data, base)


def config_path(c: Context | None = None) -> Path:
    """``$DEPLOYKIT_CONFIG``, else the invoke setting ``deploykit.config``, else
    ``deploykit.yml`` in the current directory."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if c is not None:
        section = c.config.get("deploykit") or {}
        if isinstance(section, Mapping) and section.get("config"):
            return Path(str(section["config"]))
    return Path("deploykit.yml")


@dataclass
class Project:
    """The configuration, its inventory and the hosts a command acts on."""

    config: DeployConfig
    inventory: Inventory
    web: list[Host]
    db: Host | None
    _env: AppEnv | None = None

    environment: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str] = "deploykit.yml", *, host: str | None = None,
             group: str | None = None, environment: str | None = None,
             inventory: str | os.PathLike[str] | None = None) -> Project:
        """Load ``deploykit.yml`` (with the ``environment``'s overrides, see
        :func:`load_environment`) and its inventory (or ``inventory``); ``host``/``group``
        narrow the web hosts (they must be among the configured ones)."""
        config = load_environment(path, environment, inventory)
        found = Inventory.load(config.inventory)
        project = cls._select(config, found, host, group)
        project.environment = environment or os.environ.get(ENV_VAR) or None
        return project

    @classmethod
    def _select(cls, config: DeployConfig, inventory: Inventory, host: str | None,
                group: str | None) -> Project:
        web = inventory.select(config.web)
        if host and group:
            raise ConfigError("give --host or --group, not both")
        chosen = host or group
        if chosen:
            picked = inventory.select(chosen)
            strangers = [h.name for h in picked if h not in web]
            if strangers:
                raise ConfigError(f"{', '.join(strangers)}: not among the web hosts of "
                                  f"{config.app} (web: {config.web} = "
                                  f"{', '.join(h.name for h in web)})")
            web = picked
        db = None
        if config.db:
            found = inventory.select(config.db)
            if len(found) != 1:
                raise ConfigError(f"db: {config.db!r} must select exactly one host, it selects "
                                  f"{', '.join(h.name for h in found)}")
            db = found[0]
        return cls(config, inventory, web, db)

    @property
    def app(self) -> str:
        """The app's name."""
        return self.config.app

    @property
    def hosts(self) -> list[Host]:
        """Every host a deploy locks: the web hosts, then the db host."""
        return self.web + ([self.db] if self.db is not None and self.db not in self.web else [])

    @property
    def database(self) -> str | None:
        """The app's database name, when it has one on a db host."""
        return self.config.database.name if self.db is not None else None

    def env(self) -> AppEnv:
        """The rendered .env (references resolved once)."""
        if self._env is None:
            self._env = _render_env(self.config, self.db)
        return self._env

    def secrets(self) -> list[Secret]:
        """Every secret value of the project: the .env's (the db password among them),
        host passwords (a ConfigError when a reference cannot be resolved)."""
        env = self.env()
        return [*env.secrets, env.text, *(h.password for h in self.hosts if h.password)]

    def known_secrets(self) -> list[Secret]:
        """The secrets that can be resolved now, for read-only commands (which must work
        without, say, ``${env:...}`` variables set): :meth:`secrets` when the .env
        renders, else the inventory's (host passwords, the database password)."""
        try:
            return self.secrets()
        except ConfigError:
            pass
        found = [h.password for h in self.hosts if h.password is not None]
        if self.db is not None:
            password = PgSettings.from_host(self.db).password
            if password is not None:
                found += [password, Secret(urllib.parse.quote(password.reveal(), safe=""))]
        return found

    def notifier(self) -> notify.Notifier | None:
        """The configured targets (webhook, Slack, apprise URLs), or None."""
        n = self.config.notify
        events: Any = tuple(n.events)
        hooks: list[notify.Target] = []
        url = self.config.url(n.webhook_url, "notify.webhook_url")
        if url is not None:
            hooks.append(notify.webhook(url, events=events))
        slack = self.config.secret(n.slack_webhook_url, "notify.slack_webhook_url")
        if slack is not None:
            hooks.append(notify.slack(slack, events=events))
        for i, ref in enumerate(n.apprise_urls):
            target = self.config.secret(ref, f"notify.apprise_urls[{i}]")
            if target is not None:
                hooks.append(notify.apprise_url(target, events=events))
        return notify.Notifier(hooks, timeout=n.timeout, secrets=self.secrets()) if hooks \
            else None


# == building the artifact ====================================================================


def ensure_artifact(config: DeployConfig, version: str, out: Display | None = None) -> Artifact:
    """The artifact of ``source`` as it is now, in ``<artifacts>/<app>-<version>-<digest>.tar.gz``:
    the one already built from the same inputs (reused), else built now. A changed source
    is never shipped under an old tarball of the same version label."""
    started, wall = time.monotonic(), time.time()
    built = artifacts.ensure(config.source, app=config.app,
                             version=artifacts.check_name("version", version),
                             out_dir=config.artifacts, wheelhouse=config.wheelhouse)
    if out is not None and built.path.stat().st_mtime >= wall - 1:  # built now, not reused
        out.line(f"built {built.path.name} ({built.size / 1e6:.1f} MB, sha256 "
                 f"{built.sha256[:12]}) in {time.monotonic() - started:.1f} s")
    return built


def installed_artifact(config: DeployConfig, release: ReleaseInfo) -> Artifact:
    """An already installed release as an artifact (install is then a no-op: nothing is
    uploaded, the SHA-256 matches the release's record)."""
    if not release.good or release.sha256 is None or release.version is None:
        raise ConfigError(f"release {release.release_id} is not a complete, good release")
    if release.version != release.release_id:
        raise ConfigError(f"release {release.release_id} holds version {release.version}: "
                          f"only releases named after their version can be switched to")
    path = config.artifacts / f"{config.app}-{release.version}.tar.gz"
    return Artifact(config.app, release.version, path, release.sha256, 0)
