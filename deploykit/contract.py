"""The app contract: the sections of ``deploykit.yml`` that say how an app is built, run,
checked, served and migrated, as typed, validated dataclasses with defaults.

``config.py`` embeds them (:data:`SECTIONS` names the top-level keys it hands over);
``invoke config`` lists every key with its default and one-line doc (:func:`keys`)::

    contract = load_contract(yaml_mapping, "deploykit.yml")
    contract.migrate.tool            # "django"
    contract.processes.web.argv(port=8001, release="/srv/app/releases/v2", ...)
    contract.nginx.locations("/srv/app", link="current")   # [StaticLocation, ...]

Every error is a :class:`ConfigError` naming the file and the key
(``deploykit.yml: migrate.tool: 'liquibase' is not one of sql, alembic, ...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from deploykit.errors import ConfigError
from deploykit.tasks.health import HttpCheck, VersionCheck
from deploykit.tasks.nginx import StaticLocation, Tls, check_path, check_server_name

__all__ = ["HOOK_POINTS", "SECTIONS", "AppContract", "Build", "Checks", "Counts", "Database",
           "Hooks", "KeyDoc", "Migrate", "Nginx", "NginxStatic", "NginxTls", "Process",
           "Processes", "Shared", "keys", "load_contract"]


def doc(text: str) -> dict[str, str]:
    """A field's metadata: its one-line doc (``invoke config`` shows it)."""
    return {"doc": text}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RELATIVE = re.compile(r"(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9._@+=,/-]+\Z")
_PLACEHOLDER = re.compile(r"{([a-z_]*)}")
#: what a process command or environment value may hold in braces
PLACEHOLDERS = ("port", "release", "shared", "app", "version", "color")


def _relative(value: str, key: str) -> str:
    if not _RELATIVE.match(value):
        raise ConfigError(f"{key}: {value!r} must be a relative path inside the release "
                          f"(letters, digits, ._@+=,/-, no '..')")
    return value


def _placeholders(text: str, key: str) -> None:
    for name in _PLACEHOLDER.findall(text):
        if name not in PLACEHOLDERS:
            raise ConfigError(f"{key}: unknown placeholder {{{name}}} in {text!r}; known: "
                              + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))


# -- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """``build``: how the release artifact is made on the controller."""

    source: str = field(default=".",
        metadata=doc("the app's source directory, or its git repository with git_ref"))
    git_ref: str | None = field(default=None,
        metadata=doc("build this tag or commit of source (a git repository)"))
    exclude: list[str] = field(default_factory=list,
        metadata=doc("paths or globs of the source not shipped (v2, docs)"))
    steps: list[str] = field(default_factory=list,
        metadata=doc("shell commands run on the controller in a copy of the source, the app's "
                     "requirements on PATH (collectstatic); output ships"))
    python_version: str | None = field(default=None,
        metadata=doc("resolve wheels for this Python (3.11) instead of the controller's"))
    fetch_wheels: bool = field(default=True,
        metadata=doc("download wheels missing from the wheelhouse into "
                     ".cache/wheels/<requirements hash>"))


@dataclass(frozen=True)
class Process:
    """One program of the app (``processes.web``, ``processes.workers.NAME``)."""

    command: list[str] = field(default_factory=list,
        metadata=doc("argv run in the release directory; {port}, {release}, {shared}, {app}, "
                     "{version}, {color} are filled in"))
    count: int = field(default=1, metadata=doc("instances (web: instance i listens on {port} + i)"))
    environment: dict[str, str] = field(default_factory=dict,
        metadata=doc("extra environment of this program (same placeholders)"))

    def __post_init__(self) -> None:
        if not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise ConfigError("command: a non-empty list of non-empty strings")
        if self.count < 1:
            raise ConfigError(f"count: at least 1, not {self.count}")
        for arg in self.command:
            _placeholders(arg, "command")
        for key, value in self.environment.items():
            if not _ENV_KEY.match(key):
                raise ConfigError(f"environment: invalid variable name {key!r}")
            _placeholders(value, f"environment.{key}")

    def argv(self, **values: str | int) -> list[str]:
        """The command with its placeholders filled (``port=8001, release=...``)."""
        return [_fill(arg, values) for arg in self.command]

    def env(self, **values: str | int) -> dict[str, str]:
        """The program's own environment, placeholders filled."""
        return {k: _fill(v, values) for k, v in self.environment.items()}


def _fill(text: str, values: Mapping[str, str | int]) -> str:
    def one(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise ConfigError(f"no value for {{{match[1]}}} in {text!r}")
        return str(values[match[1]])
    return _PLACEHOLDER.sub(one, text)


@dataclass(frozen=True)
class Processes:
    """``processes``: what runs, under which manager, and how it gets its settings."""

    web: Process | None = field(default=None,
        metadata=doc("the program serving HTTP (required to deploy a web app)"))
    workers: dict[str, Process] = field(default_factory=dict,
        metadata=doc("other programs by name (queues, schedulers), started and stopped with their "
                     "colour"))
    manager: Literal["supervisor", "systemd"] = field(default="supervisor",
        metadata=doc("the process manager"))
    port_variable: str | None = field(default="PORT",
        metadata=doc("environment variable carrying the web port (null: none; use {port} in the "
                     "command)"))
    env_file: bool = field(default=True,
        metadata=doc("write the app's env as the release's .env (0600)"))
    env_vars: bool = field(default=True,
        metadata=doc("also pass the app's env as environment variables"))

    def __post_init__(self) -> None:
        for name in self.workers:
            if not _NAME.match(name):
                raise ConfigError(f"workers: invalid program name {name!r}")
        if self.port_variable is not None and not _ENV_KEY.match(self.port_variable):
            raise ConfigError(f"port_variable: invalid variable name {self.port_variable!r}")


@dataclass(frozen=True)
class NginxStatic:
    """One ``nginx.static`` entry: a URL prefix served by nginx from a directory."""

    url: str = field(default="/static/", metadata=doc("URL prefix (/static/)"))
    path: str = field(default="static",
        metadata=doc("directory, relative to the release or to shared/"))
    from_: Literal["release", "shared"] = field(default="release",
        metadata=doc("release (follows the colour's link) or shared"))
    expires: str | None = field(default=None,
        metadata=doc("Expires/Cache-Control max-age: 7d, max, off"))

    def __post_init__(self) -> None:
        _relative(self.path, "path")
        try:
            StaticLocation(self.url, "/x/", self.expires)  # validates url and expires
        except ConfigError as exc:
            raise ConfigError(f"url: {exc.message}") from None


@dataclass(frozen=True)
class NginxTls:
    """``nginx.tls``: serve HTTPS with a certificate already on the host."""

    certificate: str = field(default="", metadata=doc("certificate (chain) path on the web hosts"))
    key: str = field(default="", metadata=doc("private key path on the web hosts"))
    port: int = field(default=443, metadata=doc("HTTPS port"))
    redirect_http: bool = field(default=False, metadata=doc("plain HTTP answers 301 to https"))

    def __post_init__(self) -> None:
        try:
            Tls(self.certificate, self.key, self.port, self.redirect_http)
        except ConfigError as exc:
            raise ConfigError(exc.message.removeprefix("nginx.tls.")) from None


@dataclass(frozen=True)
class Nginx:
    """``nginx``: the app's site."""

    server_name: list[str] = field(default_factory=lambda: ["_"],
        metadata=doc("host names of the site (_ catches any)"))
    static: list[NginxStatic] = field(default_factory=list,
        metadata=doc("locations nginx serves from files"))
    tls: NginxTls | None = field(default=None, metadata=doc("HTTPS (null: plain HTTP only)"))
    client_max_body_size: str | None = field(default=None,
        metadata=doc("largest request body (10m)"))

    def __post_init__(self) -> None:
        if not self.server_name:
            raise ConfigError("server_name: give at least one (or _)")
        for name in self.server_name:
            check_server_name(name, "server_name")
        if self.client_max_body_size is not None and \
                not re.fullmatch(r"\d+[kKmMgG]?", self.client_max_body_size):
            raise ConfigError(f"client_max_body_size: {self.client_max_body_size!r} is not "
                              f"a size like 10m")

    def locations(self, app_dir: str, link: str = "current") -> list[StaticLocation]:
        """The site's static locations on a host: ``<app_dir>/<link>/<path>/`` for the
        release's files (``link``: the colour's link), ``<app_dir>/shared/<path>/``."""
        check_path(app_dir, "app directory")
        return [StaticLocation(s.url, f"{app_dir}/{link if s.from_ == 'release' else 'shared'}"
                                      f"/{s.path.strip('/')}/", s.expires)
                for s in self.static]

    def tls_spec(self) -> Tls | None:
        """The :class:`deploykit.tasks.nginx.Tls` for ``nginx.site``."""
        t = self.tls
        return None if t is None else Tls(t.certificate, t.key, t.port, t.redirect_http)

    def directives(self) -> list[str]:
        """Extra ``location /`` directives."""
        size = self.client_max_body_size
        return [f"client_max_body_size {size}"] if size else []


@dataclass(frozen=True)
class Shared:
    """``shared``: paths kept across releases, linked into each from ``shared/``."""

    files: list[str] = field(default_factory=lambda: [".env"],
        metadata=doc("files (must exist in shared/ before the install)"))
    dirs: list[str] = field(default_factory=lambda: ["uploads", "logs"],
        metadata=doc("directories (created when missing): media, a SQLite file's directory"))

    def __post_init__(self) -> None:
        for key in ("files", "dirs"):
            for path in getattr(self, key):
                _relative(path, key)


@dataclass(frozen=True)
class Migrate:
    """``migrate``: the app's migration tool, run after install and before the new
    processes start, under the database lock."""

    tool: Literal["sql", "alembic", "django", "flask", "command"] | None = field(default=None,
        metadata=doc("sql | alembic | django | flask | command (null: no migrations)"))
    directory: str = field(default="migrations",
        metadata=doc("sql: the NNNN_name.up.sql directory of the source"))
    config: str = field(default="alembic.ini",
        metadata=doc("alembic: the ini file, relative to the release"))
    manage: str = field(default="manage.py",
        metadata=doc("django: manage.py, relative to the release"))
    app: str | None = field(default=None,
        metadata=doc("flask: the --app value (null: FLASK_APP from the env)"))
    up: str | None = field(default=None, metadata=doc("command: applies every pending migration"))
    down: str | None = field(default=None,
        metadata=doc("command: rolls back; {steps} is the count, else run once a step"))
    pending: str | None = field(default=None,
        metadata=doc("command: prints the pending migrations, one a line"))
    applied: str | None = field(default=None,
        metadata=doc("command: prints the applied migrations, oldest first"))
    transactional: bool | None = field(default=None,
        metadata=doc("a failed migration leaves nothing behind (null: by tool and engine)"))
    timeout: float = field(default=1800.0, metadata=doc("seconds the migration may run"))
    kinds: dict[str, Literal["expand", "contract"]] = field(default_factory=dict,
        metadata=doc("migration id -> expand (older code still works) or contract"))
    default_kind: Literal["expand", "contract"] = field(default="contract",
        metadata=doc("kind of unlisted migrations"))

    def __post_init__(self) -> None:
        if self.tool == "command":
            for key in ("up", "down", "pending"):
                if not getattr(self, key):
                    raise ConfigError(f"{key}: required with tool: command (the tool has no "
                                      f"{key} of its own)")
        for key in ("config", "manage", "directory"):
            _relative(getattr(self, key), key)


@dataclass(frozen=True)
class Database:
    """``database``: the app's database."""

    engine: Literal["postgres", "sqlite"] = field(default="postgres",
        metadata=doc("postgres or sqlite"))
    name: str | None = field(default=None, metadata=doc("postgres: the database name"))
    path: str | None = field(default=None,
        metadata=doc("sqlite: the file, relative to shared/ (data/app.db)"))
    access: Literal["os_user", "tcp", "docker"] = field(default="os_user",
        metadata=doc("postgres: as the host's OS user over the socket, over TCP, or docker exec"))
    os_user: str = field(default="postgres",
        metadata=doc("os_user: the OS user running psql/pg_dump"))
    container: str | None = field(default=None,
        metadata=doc("docker: the PostgreSQL container's name"))
    app_role: str | None = field(default=None,
        metadata=doc("create this least-privilege role owning the database (null: none)"))
    backup_keep: int = field(default=5, metadata=doc("pre-deploy backups kept"))

    def __post_init__(self) -> None:
        if self.engine == "sqlite":
            if not self.path:
                raise ConfigError("path: required with engine: sqlite")
            _relative(self.path, "path")
        if self.access == "docker" and not self.container:
            raise ConfigError("container: required with access: docker")
        for key in ("name", "app_role", "os_user", "container"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}", value):
                raise ConfigError(f"{key}: {value!r} is not a plain name")


@dataclass(frozen=True)
class Counts:
    """``checks.counts``: row counts before and after the migration."""

    tables: list[str] = field(default_factory=list,
        metadata=doc("tables whose rows are counted (both engines)"))
    tolerance: int = field(default=0, metadata=doc("rows a count may lose"))
    tolerance_percent: float | None = field(default=None,
        metadata=doc("or the share a count may lose (0.5 = 0.5 %)"))

    def __post_init__(self) -> None:
        for table in self.tables:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", table):
                raise ConfigError(f"tables: {table!r} is not a table name")
        if self.tolerance < 0 or (self.tolerance_percent or 0) < 0:
            raise ConfigError("tolerance: must not be negative")


@dataclass(frozen=True)
class Checks:
    """``checks``: data checks around the migration."""

    counts: Counts = field(default_factory=Counts, metadata=doc("row counts"))


#: Hook points, in order, with what has and has not happened when they run.
HOOK_POINTS: dict[str, str] = {
    "pre_deploy": "nothing has changed; the lock is held, the artifact is built",
    "post_install": "the release is installed (venv, shared links, .env) on every web host; "
                    "no migration has run, the new processes are not started, traffic "
                    "has not moved",
    "pre_migrate": "the pre-deploy backup exists; no migration has run; new processes not "
                   "started",
    "post_migrate": "migrations applied (and recorded); new processes not started",
    "pre_switch": "new processes started and healthy on the idle colour; traffic has not "
                  "moved",
    "post_switch": "traffic is on the new colour; the old colour still runs",
    "post_deploy": "the deploy succeeded; the old colour is stopped, the release marked ok",
    "on_failure": "the deploy failed; the undo actions have run (see the report)",
}


@dataclass(frozen=True)
class Hooks:
    """``hooks``: commands run on each web host in the release directory with the app's
    environment, at a point of the deploy (see :data:`HOOK_POINTS`)."""

    pre_deploy: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["pre_deploy"]))
    post_install: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["post_install"]))
    pre_migrate: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["pre_migrate"]))
    post_migrate: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["post_migrate"]))
    pre_switch: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["pre_switch"]))
    post_switch: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["post_switch"]))
    post_deploy: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["post_deploy"]))
    on_failure: list[str] = field(default_factory=list, metadata=doc(HOOK_POINTS["on_failure"]))


@dataclass(frozen=True)
class AppContract:
    """Every section of the app contract."""

    build: Build = field(default_factory=Build, metadata=doc("how the artifact is built"))
    processes: Processes = field(default_factory=Processes, metadata=doc("the programs"))
    health: HttpCheck = field(default_factory=HttpCheck,
        metadata=doc("when a colour counts as healthy"))
    version: VersionCheck | None = field(default=None,
        metadata=doc("where the version is read (null: no check)"))
    nginx: Nginx = field(default_factory=Nginx, metadata=doc("the site"))
    shared: Shared = field(default_factory=Shared, metadata=doc("paths kept across releases"))
    migrate: Migrate = field(default_factory=Migrate, metadata=doc("the migration tool"))
    database: Database | None = field(default=None, metadata=doc("the database (null: none)"))
    checks: Checks = field(default_factory=Checks, metadata=doc("data checks"))
    hooks: Hooks = field(default_factory=Hooks, metadata=doc("commands at hook points"))

    def __post_init__(self) -> None:
        if self.migrate.tool == "sql" and (self.database is None
                                           or self.database.engine != "postgres"):
            raise ConfigError("migrate.tool: sql needs database.engine: postgres")
        if self.migrate.tool is not None and self.database is None:
            raise ConfigError("migrate.tool: needs a database section")


#: the top-level keys of deploykit.yml that belong to the app contract
SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AppContract))

# HttpCheck/VersionCheck are task values: their keys, defaults and docs
_CHECK_DOCS = {
    "path": "URL path requested on the colour", "status": "accepted statuses (200 or a list)",
    "json_field": "a dotted JSON path that must exist (datasette.version)",
    "json_value": "the value json_field must have (absent: any value)",
    "body_pattern": "a regular expression the body must match (version: with {version})",
    "retries": "attempts after the first", "interval": "seconds between attempts",
    "timeout": "seconds per attempt",
}


# -- loading ----------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name.rstrip("_")  # from_ -> from


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of name: {_describe(args[1])}"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {str: "a string", int: "a whole number", float: "a number",
            bool: "true or false"}.get(hint, str(hint))


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as ``hint``; ConfigError naming ``key`` when it is not."""
    origin, args = get_origin(hint), get_args(hint)
    wrong = ConfigError(f"{key}: expected {_describe(hint)}, not {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(value, option, key)
            except ConfigError:
                pass
        return _convert(value, options[-1], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise wrong
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise wrong
        return {k: _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float, bool) and (type(value) is not hint):
        raise wrong
    return value


def _build(cls: type, value: Any, key: str) -> Any:
    """A dataclass from a mapping: unknown keys refused with a did-you-mean."""
    if isinstance(value, list) and cls in (HttpCheck, VersionCheck):
        raise ConfigError(f"{key}: expected a mapping, not a list")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, not {value!r}")
    hints = get_type_hints(cls)
    fields = {_key(f.name): f for f in _fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, raw in value.items():
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; keys: {', '.join(fields)}"
            raise ConfigError(f"{key}: unknown key {name!r}{hint}")
        f = fields[name]
        hint = hints[f.name]
        if cls in (HttpCheck, VersionCheck):
            hint = {"status": int | list[int], "json_value": Any}.get(f.name, hint)
        child = f"{key}.{name}" if key else name
        kwargs[f.name] = raw if hint is Any else _convert(raw, hint, child)
    if cls in (HttpCheck, VersionCheck) and isinstance(kwargs.get("status"), list):
        kwargs["status"] = tuple(kwargs["status"])
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if not key or cls in (HttpCheck, VersionCheck):  # their messages name the key
            raise
        raise ConfigError(f"{key}.{exc.message}") from None


def load_contract(mapping: Mapping[str, Any], where: str = "deploykit.yml") -> AppContract:
    """The app contract from ``deploykit.yml``'s mapping (keys outside :data:`SECTIONS` are
    config.py's and ignored here). Errors are ConfigErrors ``<where>: <key>: <what>``."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    sections = {k: v for k, v in mapping.items() if k in SECTIONS}
    try:
        contract: AppContract = _build(AppContract, sections, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    return contract


# -- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDoc:
    """One key for ``invoke config``: its dotted name, default (as YAML would show it) and
    one-line doc."""

    key: str
    default: Any
    doc: str


def _fields(cls: Any) -> list[dataclasses.Field[Any]]:
    """The keys of a section (the checks' own ``key`` attribute is not one)."""
    checks = (isinstance(cls, type) and issubclass(cls, HttpCheck)) or \
        isinstance(cls, HttpCheck)
    version = (isinstance(cls, type) and issubclass(cls, VersionCheck)) or \
        isinstance(cls, VersionCheck)
    return [f for f in dataclasses.fields(cls) if f.init and not (checks and f.name == "key")
            and not (version and f.name == "json_value")]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_key(f.name): _plain(getattr(value, f.name)) for f in _fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return None if value is HttpCheck().json_value else value


def keys(cls: type = AppContract, prefix: str = "") -> list[KeyDoc]:
    """Every key of the contract, depth first, with its default and doc."""
    out: list[KeyDoc] = []
    hints = get_type_hints(cls)
    for f in _fields(cls):
        name = f"{prefix}{_key(f.name)}"
        text = f.metadata.get("doc") or _CHECK_DOCS.get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        hint = hints[f.name]
        origin = get_origin(hint)
        inner = [a for a in get_args(hint) or (hint,)
                 if dataclasses.is_dataclass(a) and isinstance(a, type)]
        section = bool(inner) and origin not in (list, dict)
        out.append(KeyDoc(name, "" if section and default is not None else _plain(default),
                          text))
        if inner:
            more = {list: "[].", dict: ".NAME."}.get(origin, ".")
            out += keys(inner[0], f"{name}{more}")
    return out

