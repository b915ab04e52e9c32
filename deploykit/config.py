"""``deploykit.yml``: a project's deploy configuration, in one place.

Every key is documented in :data:`SCHEMA` (``invoke config`` prints them). An
unknown key (top level or inside a section) is an error with a did-you-mean,
a missing required key names itself, and a value of the wrong type says what
it should be. Relative paths are relative to the file's own directory.

**Secrets never live in the file.** A string may hold references, resolved on
the controller only when needed and then handled as
:class:`~deploykit.secrets.Secret` values (redacted from every report, log,
history line and message):

=====================  ===========================================================
``${env:NAME}``        the controller's environment variable ``NAME`` (a secret)
``${file:PATH}``       the content of a controller-side file, trailing newline
                       stripped (a secret; PATH relative to deploykit.yml); refused
                       unless the file's mode is 0600 or stricter
``${cmd:COMMAND}``     the stripped stdout of COMMAND, run without a shell in the
                       project's directory (a password manager's CLI: ``${cmd:pass
                       show shop/token}``); a non-zero exit is an error that does not
                       echo the output (see :mod:`deploykit.secrets`)
``${database_url}``    ``postgresql://user:password@db-address:port/<database.name>``
                       built from the db host's inventory vars (``postgres_user``,
                       ``postgres_password`` or ``postgres_password_file``,
                       ``postgres_port``), the password percent-encoded (a secret)
``${redis_url}``       ``redis://db-address:<redis_port or 6379>/0``
``${db.address}``      the db host's address; ``${db.VAR}`` any of its host vars
``${app}``             the app name
``$$``                 a literal ``$``
=====================  ===========================================================

Inventory values may hold ``${env:..}``, ``${file:..}`` and ``${cmd:..}`` too
(:func:`deploykit.secrets.resolve_references`). ``invoke config --show`` prints the
effective configuration with every secret redacted (:func:`effective_config`).

Credentials (``preflight.ci_token``, ``notify.slack_webhook_url``) must be a
reference; so must every key of ``env`` listed in ``preflight.required_secrets``.

Example::

    app: sampleapp
    source: examples/app          # the app's source tree, built into artifacts
    inventory: inventories/lab.yml
    web: web                      # selector of the hosts running the app
    db: db                        # selector of the one database host
    database: {name: sampleapp}
    env:                          # the app's .env, written 0600 (app user) on every web host
      DATABASE_URL: ${database_url}
      REDIS_URL: ${redis_url}
      SECRET_KEY: ${env:SAMPLEAPP_SECRET_KEY}
    preflight: {required_secrets: [DATABASE_URL, SECRET_KEY], ports_listening: [80]}
    notify: {slack_webhook_url: "${env:SLACK_WEBHOOK_URL}"}
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from deploykit.envfile import env_line
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.pg import PgSettings
from deploykit.pg import url as pg_url
from deploykit.secrets import REDACTED, LazySecret, Secret, resolve_source
from deploykit.task import Facts
from deploykit.tasks.checks import DEFAULT_WEAK_VALUES, ControllerCheck, Verdict
from deploykit.tasks.nginx import check_server_name
from deploykit.yamlsafe import YamlLimitError, short_repr
from deploykit.yamlsafe import load as load_yaml

__all__ = [
    "SCHEMA",
    "AppEnv",
    "DatabaseConfig",
    "DeployConfig",
    "Key",
    "NotifyConfig",
    "PreflightConfig",
    "RenderedEnvCheck",
    "describe_keys",
    "effective_config",
    "is_reference",
    "load_config",
    "parse_config",
    "render_env",
    "resolve_secret",
]

# -- the schema -------------------------------------------------------------------------------

REQUIRED: Any = object()
"""The default of a key that must be given."""
EVENTS = ("start", "success", "failure", "rollback")


@dataclass(frozen=True)
class Key:
    """One key: its kind (see :func:`_check`), default and meaning."""

    kind: str
    default: Any
    doc: str


SECTIONS: dict[str, dict[str, Key]] = {
    "database": {
        "name": Key("name?", None, "the app's PostgreSQL database on the db host (none: no "
                                   "database phase, no backup)"),
        "backup": Key("bool", True, "back the database up before every deploy's migrations"),
        "backup_keep_last": Key("count?", 10, "backups kept (newest); others are removed"),
        "backup_keep_days": Key("number?", None, "also keep backups younger than this"),
        "old_database_keep_days": Key("number?", 7.0, "invoke prune keeps databases a restore "
                                      "set aside (<db>_old_*) younger than this; the newest "
                                      "one always"),
    },
    "preflight": {
        "disk_paths": Key("paths", ["/"], "paths whose free space is checked on every host"),
        "min_disk_mb": Key("count", 512, "free MiB each disk path needs (check: resources)"),
        "min_memory_mb": Key("count?", 128, "available MiB of memory needed (resources)"),
        "ports_listening": Key("ports", [], "ports that must listen on the web hosts (ports)"),
        "ports_free": Key("ports", [], "ports that must be free on the web hosts (ports)"),
        "reachable": Key("endpoints", [], "'selector:port' the controller must reach, e.g. "
                                          "db:5432 (reachable)"),
        "backup_max_age_hours": Key("number?", None, "a verified backup of the database newer "
                                                     "than this must exist (backup)"),
        "ci_status_url": Key("text?", None, "GitHub-style combined status URL; {sha} is the "
                                            "commit (ci)"),
        "ci_token": Key("secret?", None, "token for the CI status API: a ${env:..} or "
                                         "${file:..} reference"),
        "git_clean": Key("bool", False, "the project's git tree must be clean (git-clean)"),
        "required_secrets": Key("names", [], "env keys that must be set, from references, and "
                                             "not weak (secrets)"),
        "min_secret_length": Key("count", 12, "shortest acceptable required secret"),
    },
    "notify": {
        "webhook_url": Key("text?", None, "generic JSON webhook (a URL or a reference)"),
        "slack_webhook_url": Key("secret?", None, "Slack incoming webhook: a reference"),
        "apprise_urls": Key("secrets", [], "apprise URLs (email, Telegram, PagerDuty, ...; "
                                           "needs deploykit[notify]), each a reference"),
        "events": Key("events", list(EVENTS), "events sent: start, success, failure, "
                                              "rollback"),
        "timeout": Key("number", 5, "seconds one notification may take, in total"),
    },
}

SECTIONS.update({
    "rolling": {
        "serial": Key("serial", 1, "hosts updated at a time: a number or a percentage ('25%')"),
        "max_fail_percentage": Key("percent", 0, "failed hosts allowed per batch before the "
                                                 "rollout stops (0: none)"),
        "drain": Key("bool", True, "take each batch out of the balancer while it is updated"),
    },
    "canary": {
        "steps": Key("percents", [10, 50, 100], "traffic percentages, in order, ending at 100"),
        "window": Key("number", 60, "seconds each step is watched before the next"),
        "max_error_rate": Key("percent", 1, "5xx percentage of the canary that aborts it"),
        "max_p95_ms": Key("number?", None, "p95 latency of the canary that aborts it"),
        "min_requests": Key("count", 20, "requests a step needs before it is judged"),
        "pause": Key("bool", False, "stop after the first step; invoke canary.promote or "
                                    "canary.abort goes on"),
    },
    "compose": {
        "file": Key("text?", None, "the compose file of runtime: compose (relative to "
                                   "deploykit.yml)"),
        "phases": Key("phases", [], "services started phase by phase, in order (phased "
                                    "startup: [[db], [api, worker], [web]])"),
    },
})

SCHEMA: dict[str, Key] = {
    "app": Key("name", REQUIRED, "application name: names /srv/<app>, programs, the upstream"),
    "source": Key("text", ".", "the app's source tree (requirements.txt, versions/)"),
    "version": Key("name?", None, "the version deployed when --version is not given"),
    "inventory": Key("text", "inventories/lab.yml", "inventory file"),
    "web": Key("text", "web", "selector of the hosts that run the app"),
    "db": Key("text?", "db", "selector of the one database host (null: none)"),
    "artifacts": Key("text", ".deploykit/artifacts", "where release artifacts are built"),
    "wheelhouse": Key("text?", None, "wheels bundled into artifacts (default: "
                                     "$DEPLOYKIT_WHEELHOUSE or ./.cache/wheelhouse)"),
    "runs": Key("text", ".deploykit/runs", "where run reports and logs are written"),
    "strategy": Key("strategy", "bluegreen", "how traffic moves: bluegreen, rolling or canary "
                                             "(settings: rolling.*, canary.*)"),
    "runtime": Key("runtime", "release", "what a colour is: release (directory + venv + "
                                         "program) or compose (a compose project)"),
    "ports": Key("colors", {"blue": 8001, "green": 8002}, "the app's port per colour"),
    "command": Key("command", ["venv/bin/gunicorn", "-c", "gunicorn.conf.py",
                               "sampleapp.web:application"],
                   "the app's command, run in the release directory"),
    "app_user": Key("text", "www-data", "the user the app runs as"),
    "server_name": Key("text", "_", "nginx server_name of the app's site"),
    "health_path": Key("text", "/health", "health endpoint (JSON with status: ok)"),
    "version_path": Key("text", "/version", "version endpoint (JSON with version)"),
    "health_retries": Key("count", 40, "health gate attempts before the deploy fails"),
    "health_interval": Key("number", 0.25, "seconds between health gate attempts"),
    "latency_budget_ms": Key("number?", 500, "p95 latency allowed through nginx (null: none)"),
    "verify_requests": Key("count", 40, "requests sent through nginx when verifying"),
    "grace_seconds": Key("number", 2, "seconds before the old colour is stopped"),
    "keep_releases": Key("count", 5, "releases kept per host"),
    "lock_ttl_minutes": Key("number", 60, "a lock older than this is reported as stale"),
    "hooks_dir": Key("text", "hooks", "executables run at hook points (pre_deploy, ...)"),
    "hook_timeout": Key("number", 300, "seconds one hook may run before it counts as failed"),
    "verify_suite": Key("text?", None, "a testinfra suite gating every deploy: its pre_switch "
                                       "tests on the idle colour, post_switch after the switch"),
    "database": Key("section", {}, "see database.*"),
    "preflight": Key("section", {}, "see preflight.*"),
    "notify": Key("section", {}, "see notify.*"),
    "rolling": Key("section", {}, "see rolling.*"),
    "canary": Key("section", {}, "see canary.*"),
    "compose": Key("section", {}, "see compose.*"),
    "env": Key("env", {}, "the app's .env: KEY: value, values may hold ${...} references"),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KIND_TEXT = {
    "name": "a name (letters, digits, '.', '_', '-')", "text": "a string", "bool": "true or false",
    "count": "a whole number >= 0", "number": "a number >= 0", "paths": "a list of absolute paths",
    "ports": "a list of ports (1-65535)", "names": "a list of variable names",
    "endpoints": "a list of 'selector:port'", "events": f"a list of {', '.join(EVENTS)}",
    "strategy": "bluegreen, rolling or canary", "colors": "{blue: PORT, green: PORT}",
    "runtime": "release or compose", "serial": "a number >= 1 or a percentage ('25%')",
    "percent": "a number from 0 to 100", "percents": "a list of percentages (1-100), rising, "
                                                    "ending at 100",
    "phases": "a list of lists of service names",
    "command": "a non-empty list of strings", "section": "a mapping",
    "env": "a mapping of NAME: value",
    "secrets": "a list of ${env:NAME} or ${file:PATH} references",
    "secret": "a ${env:NAME} or ${file:PATH} reference "
                                                "(secrets never live in deploykit.yml; "
                                                "${cmd:COMMAND} works too)",
}


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _check(kind: str, value: Any) -> bool:
    """True when ``value`` is of ``kind`` (a trailing ``?`` allows None)."""
    if kind.endswith("?"):
        return value is None or _check(kind[:-1], value)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    checks: dict[str, Callable[[], bool]] = {
        "name": lambda: isinstance(value, str) and bool(_NAME.match(value)),
        "text": lambda: isinstance(value, str) and value != "",
        "bool": lambda: isinstance(value, bool),
        "count": lambda: number and float(value).is_integer() and value >= 0,
        "number": lambda: number and value >= 0,
        "paths": lambda: strings and all(v.startswith("/") for v in value),
        "ports": lambda: isinstance(value, list) and all(_is_port(v) for v in value),
        "names": lambda: strings and all(_ENV_KEY.match(v) for v in value),
        "endpoints": lambda: strings and all(re.fullmatch(r"[^:\s]+:\d{1,5}", v) and
                                             _is_port(int(v.rsplit(":", 1)[1])) for v in value),
        "events": lambda: strings and all(v in EVENTS for v in value),
        "strategy": lambda: value in ("bluegreen", "rolling", "canary"),
        "runtime": lambda: value in ("release", "compose"),
        "serial": lambda: (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        or (isinstance(value, str) and bool(re.fullmatch(r"(100|[1-9]\d?)%", value))),
        "percent": lambda: number and 0 <= value <= 100,
        "percents": lambda: isinstance(value, list) and bool(value) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100 for v in value)
        and value == sorted(set(value)) and value[-1] == 100,
        "phases": lambda: isinstance(value, list) and all(
            isinstance(p, list) and p and all(isinstance(s, str) and _NAME.match(s) for s in p)
            for p in value),
        "colors": lambda: isinstance(value, dict) and sorted(value) == ["blue", "green"]
        and all(_is_port(v) for v in value.values()),
        "command": lambda: strings and bool(value) and all(value),
        "section": lambda: isinstance(value, dict),
        "env": lambda: isinstance(value, dict) and all(
            isinstance(k, str) and _ENV_KEY.match(k) for k in value)
        and all(isinstance(v, str | int | float) for v in value.values()),
        "secret": lambda: isinstance(value, str) and is_reference(value),
        "secrets": lambda: strings and all(is_reference(v) for v in value),
    }
    return checks[kind]()


def _unknown(where: str, key: object, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; keys: {', '.join(known)}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _values(where: str, data: Mapping[str, Any], schema: Mapping[str, Key],
            prefix: str = "") -> dict[str, Any]:
    """Validate ``data`` against ``schema``: every key known, typed, required ones present."""
    for key in data:
        if key not in schema:
            raise _unknown(f"{where}: {prefix.rstrip('.')}" if prefix else where, key,
                           list(schema))
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        if key not in data:
            if spec.default is REQUIRED:
                raise ConfigError(f"{where}: missing required key {prefix}{key!r}")
            values[key] = spec.default
            continue
        value = data[key]
        if not _check(spec.kind, value):
            kind = spec.kind.rstrip("?")
            raise ConfigError(f"{where}: {prefix}{key} must be {_KIND_TEXT[kind]}"
                              + (" or null" if spec.kind.endswith("?") else "")
                              + f", got {short_repr(value)}")
        values[key] = value
    return values


# -- references ---------------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\{([^}]*)\}")


def is_reference(text: str) -> bool:
    """True when ``text`` is exactly one ``${env:NAME}``, ``${file:PATH}`` or
    ``${cmd:COMMAND}`` reference."""
    match = _REF.fullmatch(text)
    return bool(match and match.group(1) and re.fullmatch(
        r"\s*(env:\s*[A-Za-z_]\w*|file:.+|cmd:.+)\s*", match.group(1)))


Lookup = Callable[[str], "str | Secret"]


def resolve(text: str, lookup: Lookup, where: str) -> tuple[str, list[Secret]]:
    """``text`` with every ``${...}`` replaced by ``lookup(name)``; also the secrets used.

    A reference that ``lookup`` does not know is a :class:`ConfigError` naming
    ``where`` (the key holding it).
    """
    used: list[Secret] = []

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1).strip()
        try:
            value = lookup(name)
        except KeyError:
            raise ConfigError(f"{where}: unknown reference ${{{name}}} (known: env:NAME, "
                              f"file:PATH, cmd:COMMAND, database_url, redis_url, db.address, "
                              f"db.VAR, app)") from None
        if isinstance(value, Secret):
            used.append(value)
            return value.reveal()
        return value

    if "${" in _REF.sub("", text):
        raise ConfigError(f"{where}: unclosed reference in {text!r}")
    return _REF.sub(one, text), used


def _controller_secret(name: str, base: Path, where: str) -> Secret:
    """``env:NAME``, ``file:PATH`` or ``cmd:COMMAND`` as a Secret (see
    :func:`deploykit.secrets.resolve_source`); KeyError for any other name."""
    return Secret(resolve_source(name, base, where))


# -- the configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseConfig:
    """``database:``: the app's database on the db host."""

    name: str | None = None
    backup: bool = True
    backup_keep_last: int | None = 10
    backup_keep_days: float | None = None
    old_database_keep_days: float | None = 7.0


@dataclass(frozen=True)
class PreflightConfig:
    """``preflight:``: the checks run before a deploy changes anything."""

    disk_paths: list[str] = field(default_factory=lambda: ["/"])
    min_disk_mb: int = 512
    min_memory_mb: int | None = 128
    ports_listening: list[int] = field(default_factory=list)
    ports_free: list[int] = field(default_factory=list)
    reachable: list[str] = field(default_factory=list)
    backup_max_age_hours: float | None = None
    ci_status_url: str | None = None
    ci_token: str | None = None
    git_clean: bool = False
    required_secrets: list[str] = field(default_factory=list)
    min_secret_length: int = 12


@dataclass(frozen=True)
class NotifyConfig:
    """``notify:``: where deploy events are sent."""

    webhook_url: str | None = None
    slack_webhook_url: str | None = None
    apprise_urls: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=lambda: list(EVENTS))
    timeout: float = 5.0


@dataclass(frozen=True)
class RollingConfig:
    """``rolling:``: how a rolling deploy takes the fleet."""

    serial: int | str = 1
    max_fail_percentage: float = 0.0
    drain: bool = True


@dataclass(frozen=True)
class CanaryConfig:
    """``canary:``: the steps of a canary and what aborts it."""

    steps: list[int] = field(default_factory=lambda: [10, 50, 100])
    window: float = 60.0
    max_error_rate: float = 1.0
    max_p95_ms: float | None = None
    min_requests: int = 20
    pause: bool = False


@dataclass(frozen=True)
class ComposeConfig:
    """``compose:``: the compose project of ``runtime: compose``."""

    file: Path | None = None
    phases: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class DeployConfig:
    """The validated contents of ``deploykit.yml``; paths are absolute."""

    path: Path
    app: str
    source: Path
    version: str | None
    inventory: Path
    web: str
    db: str | None
    artifacts: Path
    wheelhouse: Path | None
    runs: Path
    strategy: str
    ports: dict[str, int]
    command: list[str]
    app_user: str
    server_name: str
    health_path: str
    version_path: str
    health_retries: int
    health_interval: float
    latency_budget_ms: float | None
    verify_requests: int
    grace_seconds: float
    keep_releases: int
    lock_ttl_minutes: float
    hooks_dir: Path | None = None
    hook_timeout: float = 300.0
    verify_suite: Path | None = None
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    env: dict[str, str] = field(default_factory=dict)
    runtime: str = "release"
    rolling: RollingConfig = field(default_factory=RollingConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)

    @property
    def root(self) -> Path:
        """The directory holding deploykit.yml (the project)."""
        return self.path.parent

    @property
    def lock_ttl(self) -> float:
        """The lock TTL in seconds."""
        return self.lock_ttl_minutes * 60

    def secret(self, reference: str | None, where: str) -> Secret | None:
        """Resolve a credential reference (``${env:..}``/``${file:..}``); None when unset."""
        if reference is None:
            return None
        return resolve_secret(reference, self.root, where)

    def url(self, value: str | None, where: str) -> str | Secret | None:
        """A URL given literally (a str) or as a reference (a Secret)."""
        if value is None:
            return None
        return self.secret(value, where) if "${" in value else value


def resolve_secret(reference: str, base: Path, where: str) -> Secret:
    """The Secret a ``${env:NAME}``/``${file:PATH}`` reference names (ConfigError if not)."""
    if not is_reference(reference):
        raise ConfigError(f"{where} must be {_KIND_TEXT['secret']}, got {reference!r}")
    value, _ = resolve(reference, lambda n: _controller_secret(n, base, where), where)
    return Secret(value)


def parse_config(data: Mapping[str, Any], path: Path) -> DeployConfig:
    """Validate a loaded mapping (see :data:`SCHEMA`) into a :class:`DeployConfig`."""
    where = str(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    values = _values(where, data, SCHEMA)
    sections = {name: _values(where, values[name], keys, f"{name}.")
                for name, keys in SECTIONS.items()}
    env = {k: str(v).lower() if isinstance(v, bool) else str(v)
           for k, v in values["env"].items()}
    pre = sections["preflight"]
    for key in pre["required_secrets"]:
        if key not in env:
            raise ConfigError(f"{where}: preflight.required_secrets names {key}, which env "
                              f"does not set")
        if not _REF.search(env[key]):
            raise ConfigError(f"{where}: env.{key} is a required secret but is written in "
                              f"deploykit.yml: give it as ${{env:NAME}} or ${{file:PATH}} "
                              f"(secrets never live in deploykit.yml)")
    base = path.parent
    return DeployConfig(
        path=path,
        app=values["app"], source=(base / values["source"]).resolve(),
        version=values["version"], inventory=(base / values["inventory"]).resolve(),
        web=values["web"], db=values["db"] or None,
        artifacts=(base / values["artifacts"]).resolve(), runs=(base / values["runs"]).resolve(),
        wheelhouse=(base / values["wheelhouse"]).resolve() if values["wheelhouse"] else None,
        strategy=values["strategy"], ports=dict(values["ports"]), command=list(values["command"]),
        app_user=values["app_user"],
        server_name=check_server_name(values["server_name"], f"{path.name}: server_name"),
        health_path=values["health_path"], version_path=values["version_path"],
        health_retries=int(values["health_retries"]),
        health_interval=float(values["health_interval"]),
        latency_budget_ms=(None if values["latency_budget_ms"] is None
                           else float(values["latency_budget_ms"])),
        verify_requests=int(values["verify_requests"]),
        grace_seconds=float(values["grace_seconds"]),
        keep_releases=int(values["keep_releases"]),
        lock_ttl_minutes=float(values["lock_ttl_minutes"]),
        hooks_dir=(base / values["hooks_dir"]).resolve(),
        hook_timeout=float(values["hook_timeout"]),
        verify_suite=(base / values["verify_suite"]).resolve() if values["verify_suite"] else None,
        database=DatabaseConfig(**sections["database"]),
        preflight=PreflightConfig(**{**pre, "min_disk_mb": int(pre["min_disk_mb"])}),
        notify=NotifyConfig(**{**sections["notify"],
                               "timeout": float(sections["notify"]["timeout"])}),
        env=env,
        runtime=values["runtime"],
        rolling=RollingConfig(**{**sections["rolling"], "max_fail_percentage": float(
            sections["rolling"]["max_fail_percentage"])}),
        canary=CanaryConfig(**{**sections["canary"], "window": float(
            sections["canary"]["window"])}),
        compose=ComposeConfig(
            file=(base / sections["compose"]["file"]).resolve()
            if sections["compose"]["file"] else None,
            phases=[list(p) for p in sections["compose"]["phases"]]),
    )


def load_config(path: str | os.PathLike[str] = "deploykit.yml") -> DeployConfig:
    """Load and validate ``deploykit.yml``; every problem is one ConfigError naming the file."""
    p = Path(path).resolve()
    return parse_config(read_config_data(p), p)


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys on top; sections (mappings such as ``preflight``,
    ``env``) are merged key by key, one level deep."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def read_config_data(path: Path) -> dict[str, Any]:
    """The mapping a deploykit YAML file holds (not validated); every problem is one
    ConfigError naming the file."""
    p = path
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (create deploykit.yml; `invoke config` lists "
                          f"its keys)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except YamlLimitError as exc:
        line = f":{exc.line}" if exc.line is not None else ""
        key = f" ({exc.field})" if exc.field else ""
        raise ConfigError(f"{p}{line}{key}: refused: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected a mapping of keys, got {type(data).__name__}")
    return dict(data)


def describe_keys() -> str:
    """Every key with its default and meaning, for ``invoke config``."""
    lines = []
    for key, spec in SCHEMA.items():
        if spec.kind == "section":
            for sub, s in SECTIONS[key].items():
                lines.append(_describe(f"{key}.{sub}", s))
        else:
            lines.append(_describe(key, spec))
    return "\n".join(lines)


def _describe(key: str, spec: Key) -> str:
    shown = "(required)" if spec.default is REQUIRED else f"default {spec.default!r}"
    if len(shown) > 30:
        shown = shown[:27] + "...'"
    return f"{key:30} {shown:32} {spec.doc}"


# -- the effective configuration, redacted --------------------------------------------------


SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|api_?key|private_?key|credential",
                         re.IGNORECASE)
"""A var whose name says it holds a secret (``postgres_password``, ``api_token``): shown
redacted and treated as a secret even when written in clear (a ``*_file`` var names a
file: shown)."""


def secret_name(name: str) -> bool:
    """True when a var called ``name`` holds a secret (see :data:`SECRET_NAME`)."""
    return bool(SECRET_NAME.search(name)) and not name.endswith(("_file", "_path"))


def _shown(value: Any, where: str, problems: list[str]) -> Any:
    """A value for people: a secret as ``********`` (with its source when it has one),
    after checking that it resolves (a problem is recorded, never raised); a mapping's
    value under a secret name (:func:`secret_name`) too."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if secret_name(str(k)) and not isinstance(v, Secret)
                and v not in (None, "") else _shown(v, f"{where}.{k}", problems)
                for k, v in value.items()}
    if isinstance(value, Secret):
        source = f" ({value.source})" if isinstance(value, LazySecret) else ""
        try:
            value.reveal()
        except ConfigError as exc:
            problems.append(exc.message)
            return f"MISSING{source}"
        return f"{REDACTED}{source}"
    if isinstance(value, list | tuple):
        return [_shown(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    return value


def effective_config(config: DeployConfig, db: Host | None,
                     hosts: Sequence[Host] = ()) -> tuple[dict[str, Any], list[str]]:
    """The configuration in effect (defaults filled in, references resolved) with every
    secret redacted, for ``invoke config --show``; and the problems found (a reference
    that does not resolve: each names its key and source). Never raises for those.

    ``env`` values that use a secret show as ``******** (${env:NAME})``; credentials
    likewise; ``hosts`` (the inventory's) show their settings and vars, a password or a
    var with a source reference redacted.
    """
    problems: list[str] = []
    data: dict[str, Any] = {}
    name = config.path.name
    for key in SCHEMA:
        value = getattr(config, key)
        if key == "env":
            env: dict[str, Any] = {}
            for k, raw in value.items():
                where = f"{name}: env.{k}"
                try:
                    text, used = resolve(raw, _db_lookup(config, db, where), where)
                except ConfigError as exc:
                    problems.append(exc.message)
                    env[k] = f"MISSING ({raw})"
                    continue
                env[k] = f"{REDACTED} ({raw})" if used else text
            data[key] = env
        elif key in SECTIONS:
            section = dataclasses.asdict(value)
            for k, spec in SECTIONS[key].items():
                raw = section.get(k)
                if isinstance(raw, str) and "${" in raw:
                    try:
                        resolve_secret(raw, config.root, f"{name}: {key}.{k}").reveal()
                        section[k] = f"{REDACTED} ({raw})"
                    except ConfigError as exc:
                        problems.append(exc.message)
                        section[k] = f"MISSING ({raw})"
                elif spec.kind.startswith("secret") and raw is not None:
                    section[k] = REDACTED
            data[key] = section
        else:
            data[key] = _shown(value, key, problems)
    for h in hosts:
        entry: dict[str, Any] = {"address": h.address, "port": h.port, "user": h.user,
                                 "groups": list(h.groups)}
        if h.password is not None:
            entry["password"] = _shown(h.password, f"{h.name}.password", problems)
        if h.vars:
            entry["vars"] = _shown(dict(h.vars), f"{h.name}.vars", problems)
        data.setdefault("hosts", {})[h.name] = entry
    return data, problems


# -- the app's .env ------------------------------------------------------------------------


@dataclass(frozen=True)
class AppEnv:
    """The rendered ``.env``: its text (a Secret), every secret value inside it (to
    redact everywhere), and each key's value as a Secret (for the secrets check)."""

    text: Secret
    secrets: list[Secret]
    values: dict[str, Secret]


def _db_lookup(config: DeployConfig, db: Host | None, where: str) -> Lookup:
    def lookup(name: str) -> str | Secret:
        if name == "app":
            return config.app
        if name in ("database_url", "redis_url") or name.startswith("db."):
            if db is None:
                raise ConfigError(f"${{{name}}} needs a database host: set db in "
                                  f"{config.path.name}")
            if name == "database_url":
                return database_url(config, db)
            if name == "redis_url":
                return f"redis://{db.address}:{int(db.vars.get('redis_port', 6379))}/0"
            var = name[3:]
            if var == "address":
                return db.address
            if var not in db.vars:
                raise ConfigError(f"${{{name}}}: host {db.name} has no var {var!r}")
            value = db.vars[var]
            if isinstance(value, Secret):
                return value
            return Secret(str(value)) if secret_name(var) else str(value)
        return _controller_secret(name, config.root, where)
    return lookup


def database_url(config: DeployConfig, db: Host) -> Secret:
    """``postgresql://user:password@address:port/name`` from the db host's inventory vars
    (the password percent-encoded); a Secret."""
    if not config.database.name:
        raise ConfigError(f"${{database_url}} needs database.name in {config.path.name}")
    return pg_url(db, config.database.name)


def render_env(config: DeployConfig, db: Host | None) -> AppEnv:
    """Render ``env`` into the app's ``.env`` (``KEY=value`` lines quoted by
    :func:`deploykit.envfile.env_line`: no line break of any kind, inert when sourced by a
    shell), resolving every reference (see the module docstring)."""
    lines: list[str] = []
    secrets: list[Secret] = []
    values: dict[str, Secret] = {}
    for key, raw in config.env.items():
        where = f"{config.path.name}: env.{key}"
        value, used = resolve(raw, _db_lookup(config, db, where), where)
        line = env_line(key, value, where=where)  # refuses what cannot be written safely
        secrets += used
        for s in used:  # the password inside a URL is percent-encoded: redact that form too
            encoded = urllib.parse.quote(s.reveal(), safe="")
            if encoded != s.reveal():
                secrets.append(Secret(encoded))
        if used:
            secrets.append(Secret(value))
        values[key] = Secret(value)
        lines.append(line)
    if db is not None and config.database.name:
        password = PgSettings.from_host(db).password
        if password is not None:  # never shown even when no env value holds it
            secrets += [password, Secret(urllib.parse.quote(password.reveal(), safe=""))]
    text = Secret("".join(f"{line}\n" for line in lines))
    return AppEnv(text, [s for s in dict.fromkeys(secrets) if s], values)


# -- the controller-side secrets check -------------------------------------------------------


class RenderedEnvCheck(ControllerCheck):
    """The required secrets of the rendered ``.env`` are present and not weak.

    The same rules as :func:`deploykit.tasks.checks.env_secrets` (missing,
    empty, a known default, one character repeated, shorter than
    ``min_length``), applied on the controller to the ``.env`` deploykit is
    about to write: the values never leave the controller for this check.
    """

    kind: ClassVar[str] = "secrets"

    def __init__(self, env: AppEnv, keys: Sequence[str], *, min_length: int = 12,
                 weak: Sequence[str] = DEFAULT_WEAK_VALUES, name: str | None = None) -> None:
        super().__init__(name=name or "secrets")
        self.env = env
        self.keys = tuple(keys)
        self.min_length = min_length
        self.weak = {w.lower() for w in weak}

    def target(self) -> str:
        return ".env"

    @property
    def secrets(self) -> Sequence[Secret]:
        return self.env.secrets

    def gather(self, host: Host | None) -> Facts:
        reasons = {}
        for key in self.keys:
            value = self.env.values.get(key)
            text = value.reveal() if value is not None else None
            if text is None:
                reasons[key] = "missing"
            elif not text:
                reasons[key] = "empty"
            elif text.lower() in self.weak:
                reasons[key] = "a known default value"
            elif len(text) > 1 and len(set(text)) == 1:
                reasons[key] = "one character repeated"
            elif len(text) < self.min_length:
                reasons[key] = f"shorter than {self.min_length} characters"
            else:
                reasons[key] = "ok"
        return {"keys": reasons}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        bad = [f"{k} is {r}" for k, r in facts["keys"].items() if r != "ok"]
        data = {"keys": facts["keys"]}
        if bad:
            return Verdict([f"secrets in the app's .env (env in deploykit.yml): "
                            f"{'; '.join(bad)}"], data=data)
        return Verdict([], f"{len(self.keys)} required secret(s) set and not weak", data)
