"""nginx tasks: upstreams (blue/green colours, canary weights), sites, drain, active colour.

Each function builds a task (a plain value) that follows :mod:`deploykit.task`::

    from deploykit.tasks import nginx

    nginx.switch("shop", "green")                          # blue/green: all traffic to green
    nginx.weights("shop", {"blue": 95, "green": 5}, active="blue")     # canary: 5 % to green
    nginx.site("shop", "shop.example.com", disable_default=True)       # proxy_pass to it
    nginx.drain("shop", "green"); nginx.undrain("shop", "green")       # mark down / back up
    nginx.active_color(conn, "shop")                       # "green" (or None): a read only

What is on the host, for an app ``shop`` (paths from :class:`NginxSettings`):

* ``/etc/nginx/conf.d/shop_upstream.conf``: ``upstream shop_upstream { server ...; }``;
* ``/etc/nginx/deploykit/shop.active``: the active colour (``green\\n``), written in the
  same transaction as the upstream (only by tasks given a colour);
* ``/etc/nginx/sites-available/shop`` and the link ``/etc/nginx/sites-enabled/shop``;
* ``/etc/nginx/deploykit/backup/<full path>``: the version each write replaced.

How every writing task here works:

* **probe**: one read-only round trip reads every file the task manages (type and
  content, through :mod:`deploykit.facts` snippets: they are small).
* **plan**: compares those contents with the rendered ones: a unified diff per file,
  ``active colour: blue -> green``; empty plan, nothing sent: ``ok``.
* **apply**: one transaction on the host (one round trip; the new contents travel as a
  tar archive on stdin), under a lock (``flock``) so that two changes on one host never
  interleave:

  1. ``nginx -t`` on the current configuration: if it already fails, nothing is written
     and the task fails with nginx's message (the breakage is someone else's);
  2. every managed path is copied aside (``cp -a``), then the new files are moved into
     place (``mv``: atomic), links made, removed files removed;
  3. ``nginx -t``: on failure every path is restored from its copy, ``nginx -t`` is run
     again, and the task fails with **nginx's own message**: a configuration that fails
     ``nginx -t`` is never left in place;
  4. ``nginx -s reload`` (never a restart: the master keeps its sockets, old workers
     finish their requests), then **the reload is verified**: it took when the master
     (pid from ``pid_file``) has a child process that was not there before the signal
     (nginx forks new workers only after it has loaded the new configuration), and the
     task returns once every old worker has gone or is "shutting down" (it then accepts
     no new connection): a request sent after the task sees the new configuration. If instead
     the master logs ``[emerg]``/``[alert]`` lines in the error log (e.g. ``bind() ...
     failed``: things ``nginx -t`` does not check) and then nothing more for a second
     without starting new workers, or no new worker shows up within ``reload_timeout``,
     the files are restored and the task fails with those log lines. A stopped nginx (no
     live master) also fails the task, files restored.
  5. the replaced versions are kept under ``<state_dir>/backup/`` for people.

* **undo**: pushed before the transaction, it restores every path as the probe saw it
  (previous content, mode and owner, previous link, or removal of a file the task
  created), and runs the same transaction: tested, reloaded and verified. A restore
  that nginx rejects is reported as not undone (:class:`~deploykit.errors.RollbackError`).
  When the transaction fails having put everything back itself, the undo is dropped
  again (there is nothing left to undo); when it could not (connection lost, a restore
  failed), the undo stays for the runner.
* **check mode**: the plan only; nothing is sent but the probe.

The upstream must exist before a site that proxies to it (``nginx -t`` rejects a
``proxy_pass`` to an unknown upstream): run :func:`switch`/:func:`weights` first.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, RollbackError, TaskError
from deploykit.facts import (
    PathFacts,
    content_diff,
    content_script,
    parse_content,
    parse_path,
    path_script,
)
from deploykit.result import Result, Status
from deploykit.shell import quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "DEFAULT_COLORS",
    "DEFAULT_SETTINGS",
    "ActiveColorTask",
    "DrainTask",
    "Link",
    "NginxChangeError",
    "NginxConfigTask",
    "NginxSettings",
    "Server",
    "SiteTask",
    "StaticLocation",
    "Tls",
    "UpstreamLine",
    "UpstreamTask",
    "active_color",
    "active_color_task",
    "check_address",
    "check_app",
    "check_color",
    "check_path",
    "check_server_name",
    "drain",
    "maintenance_include",
    "nginx_message",
    "parse_upstream",
    "render_site",
    "render_upstream",
    "set_down",
    "site",
    "switch",
    "transaction",
    "undrain",
    "upstream",
    "weights",
]

DEFAULT_COLORS: Mapping[str, int | str | Sequence[str]] = {"blue": 8001, "green": 8002}
"""Where each colour of an app listens: a port on ``backend`` (default 127.0.0.1), an
address (``"10.0.0.5:8001"``, ``"unix:/run/shop-blue.sock"``) or a list of addresses."""

POLL = 0.02
"""Seconds between two looks at nginx's processes while a reload is verified."""
QUIET = 1.0
"""A reload has failed when the master logged errors and then nothing for this long
(nginx retries a failed bind() every 0.5 s, five times, and may yet succeed)."""
CONTENT_LIMIT = 256 * 1024
"""Managed files larger than this (bytes) are refused: nginx snippets are small."""

HEADER = "# Managed by deploykit ({what}) for app {app!r}. Edits here are overwritten.\n"

_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_COLOR = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?\Z")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(?P<port>\d{1,5})\Z")
_UNIX = re.compile(r"unix:/[^\s;{}#'\"\\]*\Z")
# nginx parameters and directives given by the caller: one line, no block or statement
# delimiters, no comment, no quotes (nothing that could end or escape what we render)
_RAW = re.compile(r"[^\s;{}#'\"\\]+( [^\s;{}#'\"\\]+)*\Z")
# a server name: a host name (labels of letters, digits and inner '-'), optionally with
# nginx's leading "*." / "." or trailing ".*" wildcard; an IPv6 literal; or "_"
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_SERVER_NAME = re.compile(rf"(?:\*\.|\.)?{_LABEL}(?:\.{_LABEL})*(?:\.\*)?\Z")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]\Z")
# a file system path written into the configuration (alias, certificate): absolute,
# plain characters only, no '..' or '.' component
_PATH = re.compile(r"(/[A-Za-z0-9_@+=,-][A-Za-z0-9._@+=,-]*)+/?\Z")
# a location prefix: /static/, /media/
_URL_PREFIX = re.compile(r"/([A-Za-z0-9_~-][A-Za-z0-9._~-]*/)*\Z")
_EXPIRES = re.compile(r"(\d+(ms|s|m|h|d|w|M|y)?|max|off|epoch)\Z")


# -- settings and values -------------------------------------------------------------------


@dataclass(frozen=True)
class NginxSettings:
    """Where nginx keeps things on the hosts, and how long a reload may take.

    The defaults are Debian's layout (and the lab's). ``state_dir`` holds the
    active-colour markers, the backups and the lock; nginx never reads it.
    """

    upstream_dir: str = "/etc/nginx/conf.d"
    sites_available: str = "/etc/nginx/sites-available"
    sites_enabled: str = "/etc/nginx/sites-enabled"
    state_dir: str = "/etc/nginx/deploykit"
    pid_file: str = "/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"
    binary: str = "nginx"
    reload_timeout: float = 10.0
    lock_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("upstream_dir", "sites_available", "sites_enabled", "state_dir",
                     "pid_file", "error_log"):
            value = getattr(self, name)
            if not value.startswith("/") or "\0" in value or "\n" in value:
                raise ConfigError(f"nginx settings: {name} must be an absolute path, "
                                  f"not {value!r}")
        if not 0 < self.reload_timeout <= 600 or not 0 < self.lock_timeout <= 3600:
            raise ConfigError("nginx settings: reload_timeout (0-600 s) and lock_timeout "
                              "(0-3600 s) must be positive")

    def upstream_file(self, app: str) -> str:
        """The file holding ``upstream <app>_upstream``."""
        return f"{self.upstream_dir.rstrip('/')}/{app}_upstream.conf"

    def marker(self, app: str) -> str:
        """The active-colour marker of ``app``."""
        return f"{self.state_dir.rstrip('/')}/{app}.active"

    def site_file(self, app: str) -> str:
        """The site of ``app`` in sites-available."""
        return f"{self.sites_available.rstrip('/')}/{app}"

    def site_link(self, app: str) -> str:
        """The link enabling the site of ``app``."""
        return f"{self.sites_enabled.rstrip('/')}/{app}"

    def maintenance_dir(self, app: str) -> str:
        """Where :mod:`deploykit.tasks.maintenance` puts ``app``'s maintenance snippet and
        page; the site includes ``<maintenance_dir>/*.conf`` (nothing when it is empty)."""
        return f"{self.state_dir.rstrip('/')}/maintenance/{app}"

    @property
    def default_site(self) -> str:
        """The distribution's default site, which :func:`site` may disable."""
        return f"{self.sites_enabled.rstrip('/')}/default"


DEFAULT_SETTINGS = NginxSettings()


@dataclass(frozen=True)
class Link:
    """A symbolic link pointing at ``target`` (what a managed path may be)."""

    target: str


Want = bytes | Link | None
"""What a managed path holds: file content, a link, or nothing (None: absent)."""

Attrs = tuple[int, int, int]
"""A file's ``(mode, uid, gid)``."""


@dataclass(frozen=True)
class Server:
    """One ``server`` line of an upstream.

    ``address`` is ``host:port``, ``[v6]:port`` or ``unix:/path``; ``weight`` None
    writes no ``weight=``; ``params`` are extra nginx parameters written as given
    (``"max_fails=3 fail_timeout=10s"``): nginx, not deploykit, judges them.
    """

    address: str
    weight: int | None = None
    backup: bool = False
    down: bool = False
    params: str = ""

    def __post_init__(self) -> None:
        check_address(self.address)
        if self.weight is not None and (isinstance(self.weight, bool)
                                        or not isinstance(self.weight, int)
                                        or self.weight < 1):
            raise ConfigError(f"server {self.address}: weight must be a positive integer, "
                              f"not {self.weight!r} (weight 0 is written as 'down')")
        if self.params and not _RAW.match(self.params):
            raise ConfigError(f"server {self.address}: params {self.params!r} must be nginx "
                              "parameters on one line, without ; { } # quotes or backslash")

    def render(self) -> str:
        """The ``server ...;`` line (without indentation)."""
        parts = ["server", self.address]
        if self.weight is not None:
            parts.append(f"weight={self.weight}")
        if self.params:
            parts.append(self.params)
        if self.backup:
            parts.append("backup")
        if self.down:
            parts.append("down")
        return " ".join(parts) + ";"


def check_app(app: str) -> str:
    """Validate an app name (used in file names and nginx identifiers) and return it."""
    if not isinstance(app, str) or not _APP.match(app):
        raise ConfigError(f"app name {app!r}: 1-64 letters, digits, '_' or '-', "
                          "starting with a letter or digit")
    return app


def check_color(color: str) -> str:
    """Validate a colour name (``blue``, ``green``, ``canary-2``) and return it."""
    if not isinstance(color, str) or not _COLOR.match(color):
        raise ConfigError(f"colour {color!r}: 1-32 lowercase letters, digits, '_' or '-', "
                          "starting with a letter")
    return color


def check_server_name(name: object, where: str = "nginx") -> str:
    """A server name nginx may be given: ``shop.example.com``, ``*.example.com``,
    ``.example.com``, ``www.example.*``, an IP address, ``[::1]`` or ``_`` (catch-all).
    Anything else (regular expressions, variables, spaces, ``;``, quotes, braces,
    newlines) is a :class:`ConfigError` naming ``where``, before anything is prepared."""
    if not isinstance(name, str) or len(name) > 253 or not (
            name == "_" or _SERVER_NAME.match(name) or _IPV6.match(name)):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else \
            repr(name[:80] + "...")
        raise ConfigError(f"{where}: invalid server_name {shown}: use host names "
                          f"(shop.example.com, *.example.com), an IP address or _")
    return name


def check_path(path: object, where: str) -> str:
    """An absolute path written into the configuration: plain characters only (letters,
    digits, ``._@+=,-``), no ``.``/``..`` component, else :class:`ConfigError`."""
    if not isinstance(path, str) or not _PATH.match(path) or "/./" in path + "/" or \
            any(part in (".", "..") for part in path.split("/")):
        raise ConfigError(f"{where}: {path!r} must be an absolute path of letters, digits "
                          f"and ._@+=,- (no '..')")
    return path


@dataclass(frozen=True)
class StaticLocation:
    """``location <url>`` served by nginx from ``directory`` on the host (``alias``):
    static files of the release (``/srv/shop/current/staticfiles/``) or a shared path
    (``/srv/shop/shared/media/``). ``expires``: ``7d``, ``max``, ``off`` (None: no
    header)."""

    url: str
    directory: str
    expires: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not _URL_PREFIX.match(self.url) or \
                self.url == "/":
            raise ConfigError(f"nginx location {self.url!r}: a path prefix such as "
                              f"/static/ (starting and ending with '/', not '/' itself)")
        check_path(self.directory, f"nginx location {self.url}: directory")
        if not self.directory.endswith("/"):
            object.__setattr__(self, "directory", self.directory + "/")
        if self.expires is not None and (not isinstance(self.expires, str)
                                         or not _EXPIRES.match(self.expires)):
            raise ConfigError(f"nginx location {self.url}: expires {self.expires!r} is not "
                              f"an nginx time (7d, 1h), max, off or epoch")

    def render(self) -> str:
        """The ``location`` block, indented for a ``server`` block."""
        body = [f"alias {self.directory}", "access_log off"]
        if self.expires is not None:
            body.append(f"expires {self.expires}")
        return (f"    location {self.url} {{\n" + "".join(f"        {d};\n" for d in body)
                + "    }\n\n")


@dataclass(frozen=True)
class Tls:
    """TLS for the site: ``listen <port> ssl`` with ``certificate`` and ``key`` (paths on
    the host, readable by nginx). ``redirect_http``: the plain ``listen`` ports answer
    ``301`` to ``https://`` instead of serving the app."""

    certificate: str
    key: str
    port: int = 443
    redirect_http: bool = False

    def __post_init__(self) -> None:
        check_path(self.certificate, "nginx.tls.certificate")
        check_path(self.key, "nginx.tls.key")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or \
                not 1 <= self.port <= 65535:
            raise ConfigError(f"nginx.tls.port: {self.port!r} is not a port number")


def check_address(address: str) -> str:
    """Validate an upstream server address (``host:port``, ``[v6]:port``, ``unix:/path``)."""
    if isinstance(address, str) and _UNIX.match(address):
        return address
    match = _HOST_PORT.match(address) if isinstance(address, str) else None
    if match:
        host, port = match["host"], int(match["port"])
        if 1 <= port <= 65535 and (host.startswith("[") or _HOSTNAME.match(host)):
            return address
    raise ConfigError(f"upstream server address {address!r}: expected host:port, "
                      "[ipv6]:port or unix:/path")


def _color_addresses(colors: Mapping[str, int | str | Sequence[str]], color: str,
                     backend: str) -> list[str]:
    """The addresses of one colour (a port on ``backend``, an address, or several)."""
    if color not in colors:
        raise ConfigError(f"unknown colour {color!r}; colours: {', '.join(colors) or '(none)'}")
    value = colors[color]
    if isinstance(value, bool):
        raise ConfigError(f"colour {color}: {value!r} is not a port or an address")
    if isinstance(value, int):
        host = f"[{backend}]" if ":" in backend and not backend.startswith("[") else backend
        return [check_address(f"{host}:{value}")]
    if isinstance(value, str):
        return [check_address(value)]
    addresses = [check_address(a) for a in value]
    if not addresses:
        raise ConfigError(f"colour {color}: no address")
    return addresses


def _resolve(key: str, colors: Mapping[str, int | str | Sequence[str]],
             backend: str) -> list[str]:
    """A colour name's addresses, or the address itself (anything with a ':')."""
    if ":" in key:
        return [check_address(key)]
    return _color_addresses(colors, check_color(key), backend)


def _check_directives(directives: Sequence[str], where: str) -> tuple[str, ...]:
    if isinstance(directives, str):
        raise ConfigError(f"{where}: directives is a list of strings, not one string")
    for d in directives:
        if not isinstance(d, str) or not _RAW.match(d.strip().removesuffix(";")):
            raise ConfigError(f"{where}: directive {d!r} must be one nginx directive on one "
                              "line, without ; { } # quotes or backslash")
    return tuple(d.strip().removesuffix(";") for d in directives)


# -- rendering and parsing ----------------------------------------------------------------


def render_upstream(app: str, servers: Sequence[Server], directives: Sequence[str] = ()
                    ) -> str:
    """The text of ``app``'s upstream file: ``upstream <app>_upstream { ... }``.

    ``directives`` (``"least_conn"``, ``"keepalive 16"``) come after the servers.
    """
    check_app(app)
    lines = [HEADER.format(what="nginx.upstream", app=app), f"upstream {app}_upstream {{\n"]
    lines += [f"    {s.render()}\n" for s in servers]
    lines += [f"    {d};\n" for d in _check_directives(directives, f"upstream of {app}")]
    lines.append("}\n")
    return "".join(lines)


_SERVER_LINE = re.compile(r"(?P<indent>\s*)server\s+(?P<address>[^\s;]+)(?P<params>[^;]*);"
                          r"(?P<rest>.*)\Z")


@dataclass
class UpstreamLine:
    """A ``server`` line found by :func:`parse_upstream`: its index and tokens."""

    index: int
    address: str
    params: list[str] = field(default_factory=list)

    @property
    def down(self) -> bool:
        """True when the server is marked ``down``."""
        return "down" in self.params

    @property
    def backup(self) -> bool:
        """True when the server is a ``backup``."""
        return "backup" in self.params


def parse_upstream(text: str, app: str) -> list[UpstreamLine]:
    """The ``server`` lines of ``upstream <app>_upstream { ... }`` in ``text``.

    Reads what :func:`render_upstream` writes (one statement per line); raises
    :class:`TaskError` when the block is missing or unterminated.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(rf"\s*upstream\s+{re.escape(app)}_upstream\s*\{{\s*\Z", line)),
                 None)
    if start is None:
        raise TaskError(f"no 'upstream {app}_upstream {{' block")
    found: list[UpstreamLine] = []
    for i in range(start + 1, len(lines)):
        if lines[i].strip() == "}":
            return found
        match = _SERVER_LINE.match(lines[i])
        if match:
            found.append(UpstreamLine(i, match["address"], match["params"].split()))
    raise TaskError(f"upstream {app}_upstream: block not closed")


def set_down(text: str, app: str, address: str, down: bool) -> str:
    """``text`` with ``address``'s server line in ``app``'s upstream marked ``down`` (or not).

    Raises :class:`TaskError` when the server is not in the upstream, or when
    marking it down would leave no server taking traffic (all down or backup).
    """
    servers = parse_upstream(text, app)
    target = [s for s in servers if s.address == address]
    if not target:
        listed = ", ".join(s.address for s in servers) or "(none)"
        raise TaskError(f"server {address} is not in upstream {app}_upstream "
                        f"(servers: {listed})")
    live_after = [s for s in servers if not s.backup
                  and (not s.down if s.address != address else not down)]
    if down and not live_after:
        raise TaskError(f"refusing to drain {address}: upstream {app}_upstream would have "
                        "no server taking traffic")
    lines = text.splitlines(keepends=True)
    for s in target:
        params = [p for p in s.params if p != "down"] + (["down"] if down else [])
        line = lines[s.index]
        match = _SERVER_LINE.match(line.rstrip("\r\n"))
        assert match is not None
        ending = line[len(line.rstrip("\r\n")):]
        lines[s.index] = (f"{match['indent']}server {s.address}"
                          f"{''.join(' ' + p for p in params)};{match['rest']}{ending}")
    return "".join(lines)


def render_site(app: str, server_names: Sequence[str], *, listen: Sequence[str],
                upstream: str, next_upstream: str, next_upstream_tries: int,
                connect_timeout: str, read_timeout: str,
                directives: Sequence[str] = (), include: str | None = None,
                locations: Sequence[StaticLocation] = (), tls: Tls | None = None) -> str:
    """The text of ``app``'s site: a ``server`` block proxying ``/`` to ``upstream``;
    ``include`` (a glob) is included at server level first (the maintenance seam);
    ``locations`` are served from directories; ``tls`` adds ``listen <port> ssl`` (and,
    with ``redirect_http``, a plain server answering 301 to https)."""
    out = [HEADER.format(what="nginx.site", app=app)]
    names = " ".join(server_names)
    if tls is not None and tls.redirect_http and listen:
        out.append("server {\n" + "".join(f"    listen {x};\n" for x in listen)
                   + f"    server_name {names};\n"
                   + f"    return 301 https://$host{'' if tls.port == 443 else f':{tls.port}'}"
                   + "$request_uri;\n}\n\n")
        listen = ()
    out.append("server {\n")
    out += [f"    listen {x};\n" for x in listen]
    if tls is not None:
        out.append(f"    listen {tls.port} ssl;\n")
    out.append(f"    server_name {names};\n\n")
    if tls is not None:
        out.append(f"    ssl_certificate {tls.certificate};\n"
                   f"    ssl_certificate_key {tls.key};\n"
                   "    ssl_protocols TLSv1.2 TLSv1.3;\n\n")
    if include is not None:
        out.append(f"    include {include};\n\n")
    out += [location.render() for location in locations]
    out.append("    location / {\n")
    body = [
        f"proxy_pass http://{upstream}",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_set_header Host $host",
        "proxy_set_header X-Real-IP $remote_addr",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
        "proxy_set_header X-Forwarded-Proto $scheme",
        f"proxy_connect_timeout {connect_timeout}",
        f"proxy_read_timeout {read_timeout}",
        f"proxy_next_upstream {next_upstream}",
        f"proxy_next_upstream_tries {next_upstream_tries}",
        *directives,
    ]
    out += [f"        {d};\n" for d in body]
    out += ["    }\n", "}\n"]
    return "".join(out)


# -- probing managed paths ----------------------------------------------------------------

_ENTRY = "@@dk-nginx-entry "


def _entries_script(paths: Sequence[str]) -> str:
    """One read-only snippet printing type and content of every path, in sections."""
    parts = []
    for i, path in enumerate(paths):
        parts.append(f"printf '%s%d\\n' {quote(_ENTRY)} {i}")
        parts.append(path_script(path, checksum=False))
        parts.append(content_script(path, limit=CONTENT_LIMIT))
    return "\n".join(parts)


def _parse_entries(output: str, paths: Sequence[str]) -> dict[str, tuple[PathFacts, bytes | None]]:
    sections: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(_ENTRY):
            current = sections.setdefault(int(line[len(_ENTRY):]), [])
        elif current is not None:
            current.append(line)
    result: dict[str, tuple[PathFacts, bytes | None]] = {}
    for i, path in enumerate(paths):
        if i not in sections:
            raise TaskError(f"probe printed nothing for {path}")
        text = "\n".join(sections[i])
        result[path] = (parse_path(text), parse_content(text))
    return result


def _state_of(path: str, facts: PathFacts, content: bytes | None) -> Want:
    """What a managed path holds now, as a :data:`Want`."""
    if facts.type == "absent":
        return None
    if facts.type == "link":
        return Link(facts.link_target or "")
    if facts.type == "file":
        if content is None:
            raise TaskError(f"{path} is larger than {CONTENT_LIMIT // 1024} KiB; "
                            "deploykit does not manage it")
        return content
    raise TaskError(f"{path} is a {facts.type}; expected a file, a link or nothing")


def _describe(want: Want) -> str | None:
    if want is None:
        return None
    if isinstance(want, Link):
        return f"link to {want.target}"
    return f"{len(want)} bytes"


# -- the transaction ----------------------------------------------------------------------

#: Exit codes of the transaction script, and what they mean.
_PRETEST, _TEST, _NOT_RUNNING, _RELOAD_LOGGED, _RELOAD_TIMEOUT, _STAGING, _INSTALL = (
    10, 11, 12, 13, 14, 20, 21)


def _tar(files: Sequence[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _transaction_script(changes: Sequence[tuple[str, Want]], files: Sequence[tuple[str, bytes]],
                        settings: NginxSettings, reload: bool, attrs: Mapping[str, Attrs]
                        ) -> str:
    """The shell transaction: lock, pre-test, back up, install, test, reload, verify."""
    s = settings
    state = quote(s.state_dir)
    ticks = max(1, int(s.reload_timeout / POLL))
    quiet = max(1, int(QUIET / POLL))
    out = [
        "set -u", "umask 022",
        f"nginx={quote(s.binary)}",
        f"state={state}",
        'mkdir -p -- "$state/backup" || exit 20',
        'if command -v flock >/dev/null 2>&1; then',
        '  exec 9>>"$state/.lock" || exit 20',
        f'  flock -w {s.lock_timeout:g} 9 || '
        '{ echo "another nginx change on this host holds $state/.lock" >&2; exit 20; }',
        "fi",
        'stage=$(mktemp -d "$state/.txn.XXXXXX") || exit 20',
        "trap 'rm -rf -- \"$stage\"' EXIT",
    ]
    if files:
        out.append('tar -x -m -f - -C "$stage" --no-same-owner || exit 20')
        for name, data in files:
            digest = hashlib.sha256(data).hexdigest()
            out.append(f'[ "$(sha256sum < "$stage/{name}" | cut -c1-64)" = {digest} ] || '
                       f'{{ echo "upload of {name} corrupted" >&2; exit 20; }}')
    out.append('if ! o=$("$nginx" -t 2>&1); then printf \'%s\\n\' "$o" >&2; exit 10; fi')
    restore, backups = [], []
    for i, (path, _want) in enumerate(changes):
        p = quote(path)
        out.append(f"had{i}=0; if [ -e {p} ] || [ -L {p} ]; then "
                   f'cp -a -- {p} "$stage/b{i}" || exit 20; had{i}=1; fi')
        restore.append(f'  if [ "$had{i}" = 1 ]; then mv -f -T -- "$stage/b{i}" {p}; '
                       f"else rm -f -- {p}; fi || ok=0")
        kept = quote(f"{s.state_dir.rstrip('/')}/backup{path}")
        backups.append(f'if [ "$had{i}" = 1 ]; then mkdir -p -- "$(dirname -- {kept})" && '
                       f'mv -f -T -- "$stage/b{i}" {kept}; else rm -f -- {kept}; fi')
    out += ["restore() {", "  ok=1", *restore,
            '  [ "$ok" = 1 ] || echo "@@dk-restore-failed" >&2', "}"]
    names = iter(name for name, _ in files)
    for i, (path, want) in enumerate(changes):
        p = quote(path)
        if want is None:
            step = f"rm -f -- {p}"
        elif isinstance(want, Link):
            step = (f'ln -s -f -n -- {quote(want.target)} "$stage/l{i}" && '
                    f'mv -f -T -- "$stage/l{i}" {p}')
        else:
            f = f'"$stage/{next(names)}"'
            if path in attrs:
                mode, uid, gid = attrs[path]
                keep = f"chmod {mode:o} {f} && chown {uid}:{gid} {f}"
            else:
                keep = (f"if [ -f {p} ] && [ ! -L {p} ]; then chmod --reference={p} {f} && "
                        f"chown --reference={p} {f}; else chmod 644 {f}; fi")
            step = f"{{ {keep}; }} && mv -f -T -- {f} {p}"
        out.append(f"{step} || {{ restore; exit 21; }}")
    out += [
        'if ! o=$("$nginx" -t 2>&1); then',
        "  printf '%s\\n' \"$o\" >&2; restore",
        '  if ! o=$("$nginx" -t 2>&1); then printf \'@@dk-retest\\n%s\\n\' "$o" >&2; fi',
        "  exit 11",
        "fi",
    ]
    if reload:
        log, pidfile = quote(s.error_log), quote(s.pid_file)
        out += [
            f"pid=$(head -n 1 -- {pidfile} 2>/dev/null)",
            'case "$pid" in ""|*[!0-9]*) pid=0 ;; esac',
            'if [ "$pid" = 0 ] || ! kill -0 "$pid" 2>/dev/null; then',
            f"  echo {quote(f'nginx is not running (no live master process in {s.pid_file})')}"
            " >&2",
            "  restore; exit 12",
            "fi",
            'old=" $(pgrep -P "$pid" | tr \'\\n\' \' \')"',
            f"size=$(stat -c %s -- {log} 2>/dev/null || echo 0)",
            'if ! o=$("$nginx" -s reload 2>&1); then printf \'%s\\n\' "$o" >&2; restore; '
            "exit 12; fi",
            "i=0; q=0; took=0; errs=",
            f'while [ "$i" -lt {ticks} ]; do',
            '  if [ "$took" = 0 ]; then',
            '    for w in $(pgrep -P "$pid"); do case "$old " in *" $w "*) ;; *) took=1 ;; '
            "esac; done",
            "  fi",
            '  if [ "$took" = 1 ]; then',
            "    busy=0",
            '    for w in $old; do case "$(ps -o args= -p "$w" 2>/dev/null)" in '
            '*"worker process is shutting down"*) ;; *"worker process"*) busy=1 ;; esac; done',
            '    [ "$busy" = 0 ] && break',
            "  else",
            f'    e=$(tail -c +$((size + 1)) -- {log} 2>/dev/null | '
            "grep -E \"\\[(emerg|alert)\\] $pid#\")",
            '    if [ -n "$e" ]; then',
            '      if [ "$e" = "$errs" ]; then q=$((q + 1)); else q=0; errs=$e; fi',
            f'      [ "$q" -ge {quiet} ] && break',
            "    fi",
            "  fi",
            f"  sleep {POLL:g}; i=$((i + 1))",
            "done",
            'if [ "$took" = 0 ]; then',
            '  restore',
            '  if [ -n "$errs" ]; then printf \'%s\\n\' "$errs" >&2; exit 13; fi',
            '  "$nginx" -s reload >/dev/null 2>&1',
            "  exit 14",
            "fi",
        ]
    out += backups
    out.append("echo dk-nginx-ok")
    return "\n".join(out)


_LOG_PREFIX = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?(\[\w+\]) \d+#\d+: ")


def nginx_message(text: str) -> str:
    """nginx's output or error-log lines, without timestamps, ``pid#tid:`` prefixes and
    repeated lines: ``[emerg] invalid parameter "x" in /etc/nginx/conf.d/a.conf:3``."""
    lines = [_LOG_PREFIX.sub(r"\2 ", line) for line in text.strip().splitlines()]
    return "\n".join(dict.fromkeys(lines))  # nginx repeats a failed bind() five times


class NginxChangeError(TaskError):
    """A :func:`transaction` failed; ``restored`` says every path is as it was before."""

    def __init__(self, message: str, *, host: str | None = None, task: str | None = None,
                 restored: bool = False) -> None:
        super().__init__(message, host=host, task=task)
        self.restored = restored


def transaction(conn: Connection, changes: Sequence[tuple[str, Want]], *,
                settings: NginxSettings = DEFAULT_SETTINGS, reload: bool = True,
                attrs: Mapping[str, Attrs] | None = None, task: str | None = None) -> None:
    """Write ``changes`` (path -> content, :class:`Link` or None) as one tested transaction.

    One round trip; see the module docstring for the steps. A new file gets the
    mode and owner of the file it replaces (0644 and the login user when there is
    none), or ``attrs[path]`` = ``(mode, uid, gid)`` when given. Raises
    :class:`NginxChangeError` with nginx's own message when the current
    configuration is already broken, when the new one fails ``nginx -t``, or when
    the reload does not take; its ``restored`` is True when every path is as it
    was before (False if putting one back failed too: the message says so).
    """
    files = [(f"f{i}", want) for i, (_, want) in enumerate(changes) if isinstance(want, bytes)]
    script = _transaction_script(changes, files, settings, reload, attrs or {})
    res = conn.run(script, stdin=_tar(files) if files else None, check=False, task=task,
                   timeout=settings.lock_timeout + settings.reload_timeout + 120)
    if res.ok and res.stdout.strip().endswith("dk-nginx-ok"):
        return
    stderr = res.stderr.replace("@@dk-restore-failed\n", "")
    restored = stderr == res.stderr
    detail, _, retest = stderr.strip().partition("@@dk-retest\n")
    paths = ", ".join(path for path, _ in changes)
    detail = nginx_message(detail)
    still = (f"; nginx -t still fails after the restore: {nginx_message(retest)}"
             if retest else "")
    messages = {
        _PRETEST: f"nginx -t fails before any change, nothing written: {detail}",
        _TEST: f"nginx -t rejected the new configuration; restored {paths}: {detail}{still}",
        _NOT_RUNNING: f"nginx reload failed; restored {paths}: {detail}",
        _RELOAD_LOGGED: f"nginx did not take the new configuration; restored {paths}: "
                        f"{detail}",
        _RELOAD_TIMEOUT: f"nginx did not start new workers within {settings.reload_timeout:g} s "
                         f"of the reload; restored {paths} and reloaded again",
        _STAGING: f"could not prepare the change (nothing written): {detail}",
        _INSTALL: f"could not write the files; restored {paths}: {detail}",
    }
    message = messages.get(res.exit_code,
                           f"nginx transaction failed (exit code {res.exit_code}): "
                           f"{detail or res.stdout.strip()}")
    if not restored:
        message = message.replace("; restored ", "; FAILED to restore ", 1)
    raise NginxChangeError(message, host=conn.name, task=task,
                           restored=restored and res.exit_code in messages)


# -- the base task ------------------------------------------------------------------------


class NginxConfigTask(Task):
    """A task owning some nginx paths; subclasses say what they should hold.

    :meth:`managed` lists ``(path, label)`` pairs (fixed when the task is built:
    they are probed in one round trip); :meth:`desired` gives each path's wanted
    state from the current states.
    """

    kind: ClassVar[str] = "nginx"

    def __init__(self, *, settings: NginxSettings | None = None, reload: bool = True,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.settings = settings or DEFAULT_SETTINGS
        self.reload = reload

    @abstractmethod
    def managed(self) -> list[tuple[str, str]]:
        """``(path, label)`` of every path this task manages; a label of ``active colour``
        shows the content itself in plans."""

    @abstractmethod
    def desired(self, conn: Connection, current: Mapping[str, Want]) -> dict[str, Want]:
        """The wanted state of every managed path, given their current states."""

    def probe_script(self) -> str:
        return _entries_script([p for p, _ in self.managed()])

    def parse(self, output: str) -> Facts:
        paths = [p for p, _ in self.managed()]
        raw = _parse_entries(output, paths)
        return {"entries": raw}

    def current(self, conn: Connection, facts: Facts) -> dict[str, Want]:
        """The current state of every managed path, from the probe's facts."""
        try:
            return {path: _state_of(path, pf, content)
                    for path, (pf, content) in facts["entries"].items()}
        except TaskError as exc:
            raise TaskError(exc.message, host=conn.name, task=self.name) from None

    def differences(self, conn: Connection, facts: Facts) -> list[tuple[str, Want, Want]]:
        """``(path, current, wanted)`` for every managed path that differs, in order."""
        now = self.current(conn, facts)
        try:
            wanted = self.desired(conn, now)
        except TaskError as exc:
            raise TaskError(exc.message, host=conn.name, task=self.name) from None
        return [(path, now[path], wanted[path]) for path, _ in self.managed()
                if path in wanted and wanted[path] != now[path]]

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        labels = dict(self.managed())
        plan = Plan()
        for path, before, after in self.differences(conn, facts):
            if labels[path] == "active colour":
                plan.add("active colour", _marker_text(before), _marker_text(after))
                continue
            diff = ""
            if isinstance(after, bytes) and not isinstance(before, Link):
                diff = content_diff(before, after, path)
            elif isinstance(before, bytes) and after is None:
                diff = content_diff(before, b"", path)
            plan.add(f"{labels[path]} {path}", _describe(before), _describe(after), diff)
        return plan

    def attributes(self) -> Mapping[str, Attrs]:
        """``(mode, uid, gid)`` to give written files (default: those of the file replaced)."""
        return {}

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        changes = self.differences(conn, facts)
        previous = [(path, before) for path, before, _ in changes]
        entries: dict[str, tuple[PathFacts, bytes | None]] = facts["entries"]
        attrs = {path: (pf.mode or 0o644, pf.uid or 0, pf.gid or 0)
                 for path, _ in previous for pf in [entries[path][0]] if pf.type == "file"}
        undo.push(f"restore {', '.join(p for p, _ in previous)}",
                  _restore_action(previous, attrs, self.settings, self.reload, self.name))
        pushed = undo.actions[-1]
        try:
            transaction(conn, [(path, after) for path, _, after in changes],
                        settings=self.settings, reload=self.reload, attrs=self.attributes(),
                        task=self.name)
        except NginxChangeError as exc:
            if exc.restored:  # the host is as before: nothing is left to undo
                undo.actions.remove(pushed)
            raise


def _marker_text(want: Want) -> str | None:
    if isinstance(want, bytes):
        return want.decode("utf-8", "replace").strip()
    return None if want is None else _describe(want)


class _RestoreTask(NginxConfigTask):
    """Puts paths back as a probe saw them (what undo runs)."""

    kind = "nginx.restore"

    def __init__(self, previous: Sequence[tuple[str, Want]], attrs: Mapping[str, Attrs], *,
                 settings: NginxSettings | None = None, reload: bool = True,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, reload=reload, name=name)
        self.previous = dict(previous)
        self.attrs = dict(attrs)

    def attributes(self) -> Mapping[str, Attrs]:
        return self.attrs

    def managed(self) -> list[tuple[str, str]]:
        return [(p, "file") for p in self.previous]

    def desired(self, conn: Connection, current: Mapping[str, Want]) -> dict[str, Want]:
        return dict(self.previous)


def _restore_action(previous: Sequence[tuple[str, Want]], attrs: Mapping[str, Attrs],
                    settings: NginxSettings, reload: bool, task: str
                    ) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        restore = _RestoreTask(previous, attrs, settings=settings, reload=reload,
                               name=f"undo {task}")
        result = restore.run(conn)
        if result.failed:
            raise RollbackError(result.message, host=conn.name, task=restore.name)

    return run


# -- upstream: colours and weights --------------------------------------------------------


class UpstreamTask(NginxConfigTask):
    """``app``'s upstream file holds these servers (and the marker this colour, if given)."""

    kind = "nginx.upstream"

    def __init__(self, app: str, servers: Sequence[Server], *, active: str | None = None,
                 directives: Sequence[str] = (), settings: NginxSettings | None = None,
                 reload: bool = True, name: str | None = None) -> None:
        super().__init__(settings=settings, reload=reload, name=name)
        self.app = check_app(app)
        self.servers = tuple(servers)
        if not self.servers:
            raise ConfigError(f"upstream of {app}: no server")
        addresses = [s.address for s in self.servers]
        dupes = sorted({a for a in addresses if addresses.count(a) > 1})
        if dupes:
            raise ConfigError(f"upstream of {app}: server {dupes[0]} listed twice")
        if all(s.down or s.backup for s in self.servers):
            raise ConfigError(f"upstream of {app}: no server would take traffic "
                              "(every one is down or backup)")
        self.active = None if active is None else check_color(active)
        self.text = render_upstream(app, self.servers, directives).encode()

    def target(self) -> str:
        return self.app

    def managed(self) -> list[tuple[str, str]]:
        paths = [(self.settings.upstream_file(self.app), "upstream")]
        if self.active is not None:
            paths.append((self.settings.marker(self.app), "active colour"))
        return paths

    def desired(self, conn: Connection, current: Mapping[str, Want]) -> dict[str, Want]:
        wanted: dict[str, Want] = {self.settings.upstream_file(self.app): self.text}
        if self.active is not None:
            wanted[self.settings.marker(self.app)] = f"{self.active}\n".encode()
        return wanted


_UPSTREAM_DOC = """
    Files: ``<upstream_dir>/<app>_upstream.conf`` holding ``upstream <app>_upstream``
    (what :func:`site` proxies to) and, with a colour, the marker
    ``<state_dir>/<app>.active`` written in the same transaction.
    Idempotence: ``ok`` (nothing sent but the probe) when both already hold exactly
    what would be written.
    Check mode: the unified diff of the upstream, ``active colour: blue -> green``.
    Apply: one tested transaction: ``nginx -t``, ``nginx -s reload``, reload verified
    (new workers); nginx's own message and every file restored on failure.
    Undo: restores the previous upstream and marker (or removes them if they were
    new), tests and reloads.
"""


def upstream(app: str, servers: Sequence[Server], *, active: str | None = None,
             directives: Sequence[str] = (), settings: NginxSettings | None = None,
             reload: bool = True, name: str | None = None) -> UpstreamTask:
    """Ensure ``app``'s upstream holds exactly ``servers`` (the general form).

    Args:
        app: the app's name (``upstream <app>_upstream``; file names).
        servers: the :class:`Server` lines, in order.
        active: a colour to write in the marker (read back by :func:`active_color`);
            None leaves the marker as it is.
        directives: extra upstream directives after the servers, without ``;``
            (``"least_conn"``, ``"keepalive 16"``); nginx judges them.
        settings: paths and timeouts (:class:`NginxSettings`; Debian's by default).
        reload: reload nginx after writing (verified); False only writes and tests.
        name: the step's name in reports.
    """
    return UpstreamTask(app, servers, active=active, directives=directives,
                        settings=settings, reload=reload, name=name)


def switch(app: str, color: str, *,
           colors: Mapping[str, int | str | Sequence[str]] = DEFAULT_COLORS,
           backend: str = "127.0.0.1", idle_as_backup: bool = False,
           directives: Sequence[str] = (), settings: NginxSettings | None = None,
           reload: bool = True, name: str | None = None) -> UpstreamTask:
    """Blue/green: send all of ``app``'s traffic to ``color`` and mark it active.

    Args:
        app: the app's name.
        color: the colour to switch to (a key of ``colors``).
        colors: where each colour listens: a port on ``backend``, an address, or a
            list of addresses (default blue on 8001, green on 8002).
        backend: the host of colours given as a port (default 127.0.0.1: the app runs
            on the web host itself).
        idle_as_backup: also list the other colours' servers as ``backup`` (nginx
            sends them traffic only when every active server fails); default: the
            upstream holds the active colour only.
        directives, settings, reload: as for :func:`upstream`.
        name: the step's name in reports (default ``nginx.switch <app> -> <color>``).
    """
    check_color(color)
    servers = [Server(a) for a in _color_addresses(colors, color, backend)]
    if idle_as_backup:
        servers += [Server(a, backup=True) for other in colors if other != color
                    for a in _color_addresses(colors, other, backend)]
    return UpstreamTask(app, servers, active=color, directives=directives, settings=settings,
                        reload=reload, name=name or f"nginx.switch {app} -> {color}")


def weights(app: str, weights: Mapping[str, int], *,
            colors: Mapping[str, int | str | Sequence[str]] = DEFAULT_COLORS,
            backend: str = "127.0.0.1", active: str | None = None,
            directives: Sequence[str] = (), settings: NginxSettings | None = None,
            reload: bool = True, name: str | None = None) -> UpstreamTask:
    """Canary: split ``app``'s traffic by weight (``{"blue": 95, "green": 5}``).

    Args:
        app: the app's name.
        weights: colour name (a key of ``colors``; each of its addresses gets the
            weight) or server address (``"10.0.0.7:8001"``) -> weight. nginx sends
            each server weight/total of the requests (smooth weighted round-robin).
            **Weight 0 keeps the server in the upstream marked ``down``** (nginx has
            no weight 0): it gets no traffic, and :func:`undrain` brings it back with
            weight 1. At least one weight must be positive.
        colors, backend: as for :func:`switch`.
        active: the colour to record in the marker (for a canary: the stable one);
            None leaves the marker as it is.
        directives, settings, reload: as for :func:`upstream`.
        name: the step's name in reports (default ``nginx.weights <app> blue=95 green=5``).
    """
    if not weights:
        raise ConfigError(f"weights of {app}: empty")
    servers: list[Server] = []
    for key, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ConfigError(f"weights of {app}: weight of {key} must be an integer >= 0, "
                              f"not {weight!r}")
        for address in _resolve(key, colors, backend):
            servers.append(Server(address, weight=weight or None, down=weight == 0))
    label = " ".join(f"{k}={v}" for k, v in weights.items())
    return UpstreamTask(app, servers, active=active, directives=directives, settings=settings,
                        reload=reload, name=name or f"nginx.weights {app} {label}")


upstream.__doc__ = (upstream.__doc__ or "") + _UPSTREAM_DOC
switch.__doc__ = (switch.__doc__ or "") + _UPSTREAM_DOC
weights.__doc__ = (weights.__doc__ or "") + _UPSTREAM_DOC


# -- drain and undrain --------------------------------------------------------------------


class DrainTask(NginxConfigTask):
    """Mark servers of ``app``'s upstream ``down`` (drain) or not (undrain)."""

    kind = "nginx.drain"

    def __init__(self, app: str, addresses: Sequence[str], *, down: bool,
                 settings: NginxSettings | None = None, reload: bool = True,
                 name: str | None = None) -> None:
        verb = "nginx.drain" if down else "nginx.undrain"
        super().__init__(settings=settings, reload=reload,
                         name=name or f"{verb} {app} {' '.join(addresses)}")
        self.app = check_app(app)
        self.addresses = tuple(check_address(a) for a in addresses)
        if not self.addresses:
            raise ConfigError(f"{verb} {app}: no server given")
        self.down = down

    def target(self) -> str:
        return f"{self.app} {' '.join(self.addresses)}"

    def managed(self) -> list[tuple[str, str]]:
        return [(self.settings.upstream_file(self.app), "upstream")]

    def desired(self, conn: Connection, current: Mapping[str, Want]) -> dict[str, Want]:
        path = self.settings.upstream_file(self.app)
        now = current[path]
        if not isinstance(now, bytes):
            raise TaskError(f"{path}: no upstream file for app {self.app} (create it with "
                            "nginx.switch, nginx.weights or nginx.upstream first)")
        text = now.decode("utf-8", "surrogateescape")
        try:
            for address in self.addresses:
                text = set_down(text, self.app, address, self.down)
        except TaskError as exc:
            raise TaskError(f"{path}: {exc.message}") from None
        return {path: text.encode("utf-8", "surrogateescape")}


def _drain_task(app: str, server: str | Sequence[str], down: bool,
                colors: Mapping[str, int | str | Sequence[str]], backend: str,
                settings: NginxSettings | None, reload: bool, name: str | None) -> DrainTask:
    keys = [server] if isinstance(server, str) else list(server)
    addresses = [a for key in keys for a in _resolve(key, colors, backend)]
    return DrainTask(app, addresses, down=down, settings=settings, reload=reload, name=name)


def drain(app: str, server: str | Sequence[str], *,
          colors: Mapping[str, int | str | Sequence[str]] = DEFAULT_COLORS,
          backend: str = "127.0.0.1", settings: NginxSettings | None = None,
          reload: bool = True, name: str | None = None) -> DrainTask:
    """Take a server out of ``app``'s upstream by marking it ``down`` (kept in the file).

    Args:
        app: the app's name.
        server: a colour (all its addresses), a server address, or a list of them.
        colors, backend: as for :func:`switch`, to resolve colour names.
        settings, reload, name: as for :func:`upstream`.

    The upstream file must exist (written by :func:`switch`/:func:`weights`/
    :func:`upstream`). The server keeps its line, weight and parameters, with
    ``down`` added: nginx sends it no new request after the (verified) reload;
    requests in flight finish in the old workers. Draining the last server
    taking traffic (every other one down or backup) is refused; so is a server
    the upstream does not list.
    Idempotence: ``ok`` when already down. Check mode: the diff of the line.
    Undo: restores the previous upstream file, tests and reloads.
    """
    return _drain_task(app, server, True, colors, backend, settings, reload, name)


def undrain(app: str, server: str | Sequence[str], *,
            colors: Mapping[str, int | str | Sequence[str]] = DEFAULT_COLORS,
            backend: str = "127.0.0.1", settings: NginxSettings | None = None,
            reload: bool = True, name: str | None = None) -> DrainTask:
    """Put a drained server of ``app``'s upstream back into service (remove ``down``).

    Arguments, idempotence, check mode and undo as for :func:`drain`. A server given
    weight 0 by :func:`weights` comes back with nginx's default weight 1.
    """
    return _drain_task(app, server, False, colors, backend, settings, reload, name)


# -- site ---------------------------------------------------------------------------------


class SiteTask(NginxConfigTask):
    """``app``'s site proxies to its upstream, is enabled, and the default site maybe not."""

    kind = "nginx.site"

    def __init__(self, app: str, text: str, *, disable_default: bool,
                 settings: NginxSettings | None = None, reload: bool = True,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, reload=reload, name=name)
        self.app = check_app(app)
        self.text = text.encode()
        self.disable_default = disable_default

    def target(self) -> str:
        return self.app

    def managed(self) -> list[tuple[str, str]]:
        s = self.settings
        paths = [(s.site_file(self.app), "site"), (s.site_link(self.app), "enabled")]
        if self.disable_default:
            paths.append((s.default_site, "default site"))
        return paths

    def desired(self, conn: Connection, current: Mapping[str, Want]) -> dict[str, Want]:
        s = self.settings
        wanted: dict[str, Want] = {s.site_file(self.app): self.text,
                                   s.site_link(self.app): Link(s.site_file(self.app))}
        if self.disable_default:
            wanted[s.default_site] = None
        return wanted


_TIME = re.compile(r"\d+(ms|s|m)?\Z")


def site(app: str, server_name: str | Sequence[str], *,
         listen: int | str | Sequence[int | str] = 80, upstream: str | None = None,
         disable_default: bool = False,
         next_upstream: str = "error timeout", next_upstream_tries: int = 2,
         connect_timeout: str = "2s", read_timeout: str = "60s",
         directives: Sequence[str] = (), locations: Sequence[StaticLocation] = (),
         tls: Tls | None = None, settings: NginxSettings | None = None,
         reload: bool = True, name: str | None = None) -> SiteTask:
    """Ensure ``app``'s site exists, is enabled, and proxies every request to its upstream.

    Args:
        app: the app's name.
        server_name: the site's name(s) (``"shop.example.com"``, or a list; ``"_"``
            catches any name).
        listen: ``listen`` parameter(s): a port (``80``), ``"127.0.0.1:8080"``,
            ``"80 default_server"``, or a list of them.
        upstream: the upstream to proxy to (default ``<app>_upstream``, written by
            :func:`switch`/:func:`weights`, which must run first).
        disable_default: also remove ``sites-enabled/default`` (the distribution's
            catch-all site); undo puts it back as it was (file or link).
        next_upstream: when nginx retries a request on the next server of the
            upstream (``proxy_next_upstream``): ``error timeout`` by default, so that
            a backend that stops or refuses during a switch loses no request; add
            ``http_502 http_503`` to also retry on those (which hides a failing
            canary's errors from a measurement through nginx).
        next_upstream_tries: at most this many servers per request (nginx counts the
            first try).
        connect_timeout, read_timeout: ``proxy_connect_timeout``/``proxy_read_timeout``.
        directives: extra directives in ``location /``, without ``;``
            (``"client_max_body_size 10m"``).
        locations: :class:`StaticLocation` prefixes nginx serves from a directory
            (``/static/`` from the release, ``/media/`` from a shared path), before
            ``location /``; URLs must be distinct.
        tls: a :class:`Tls`: ``listen 443 ssl`` with its certificate and key (and
            optionally plain HTTP redirected to https).
        settings, reload: as for :func:`upstream`.
        name: the step's name in reports (default ``nginx.site <app>``).

    Files: ``<sites_available>/<app>`` and the link ``<sites_enabled>/<app>`` to it.
    The site includes ``<state_dir>/maintenance/<app>/*.conf`` at server level (empty
    unless :func:`deploykit.tasks.maintenance.maintenance` turned maintenance on).
    Idempotence: ``ok`` when the site's content, the link and (with
    ``disable_default``) the default site's absence are already as wanted.
    Check mode: the unified diff of the site, the link and the removal.
    Apply: one tested transaction as for :func:`upstream`.
    Undo: restores the previous site and link (or removes them) and the default site.
    """
    check_app(app)
    names = [server_name] if isinstance(server_name, str) else list(server_name)
    if not names:
        raise ConfigError(f"site of {app}: invalid server_name {server_name!r}: give one")
    for n in names:
        check_server_name(n, f"site of {app}")
    urls = [loc.url for loc in locations]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"site of {app}: a location URL appears twice in {urls}")
    listens = [listen] if isinstance(listen, int | str) else list(listen)
    checked: list[str] = []
    for item in listens:
        text = str(item).strip()
        if isinstance(item, bool) or not text or not _RAW.match(text):
            raise ConfigError(f"site of {app}: invalid listen {item!r}")
        checked.append(text)
    target = f"{app}_upstream" if upstream is None else upstream
    if not isinstance(target, str) or not _APP.match(target):
        raise ConfigError(f"site of {app}: invalid upstream name {upstream!r}")
    if not _RAW.match(next_upstream):
        raise ConfigError(f"site of {app}: invalid next_upstream {next_upstream!r}")
    if isinstance(next_upstream_tries, bool) or not isinstance(next_upstream_tries, int) \
            or next_upstream_tries < 0:
        raise ConfigError(f"site of {app}: next_upstream_tries must be an integer >= 0")
    for label, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not _TIME.match(value):
            raise ConfigError(f"site of {app}: {label} {value!r} is not an nginx time "
                              "like '2s' or '500ms'")
    text = render_site(app, names, listen=checked, upstream=target, next_upstream=next_upstream,
                       next_upstream_tries=next_upstream_tries, connect_timeout=connect_timeout,
                       read_timeout=read_timeout,
                       directives=_check_directives(directives, f"site of {app}"),
                       include=maintenance_include(app, settings), locations=locations,
                       tls=tls)
    return SiteTask(app, text, disable_default=disable_default, settings=settings,
                    reload=reload, name=name)


def maintenance_include(app: str, settings: NginxSettings | None = None) -> str:
    """The glob every site includes at server level: ``<state_dir>/maintenance/<app>/*.conf``
    (nginx accepts a glob that matches nothing: without maintenance it adds nothing)."""
    return f"{(settings or DEFAULT_SETTINGS).maintenance_dir(check_app(app))}/*.conf"


# -- active colour ------------------------------------------------------------------------


class ActiveColorTask(Task):
    """Read ``app``'s active colour; never changes anything. See :func:`active_color_task`."""

    kind: ClassVar[str] = "nginx.active_color"

    def __init__(self, app: str, *, settings: NginxSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.app = check_app(app)
        self.settings = settings or DEFAULT_SETTINGS

    def target(self) -> str:
        return self.app

    def probe_script(self) -> str:
        return _entries_script([self.settings.marker(self.app)])

    def parse(self, output: str) -> Facts:
        path = self.settings.marker(self.app)
        facts, content = _parse_entries(output, [path])[path]
        state = _state_of(path, facts, content)
        if state is None:
            return {"color": None}
        if not isinstance(state, bytes):
            raise TaskError(f"{path} is a {facts.type}, not a colour marker")
        color = state.decode("utf-8", "replace").strip()
        if not _COLOR.match(color):
            raise TaskError(f"{path} holds {color[:40]!r}, not a colour name")
        return {"color": color}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise AssertionError("an empty plan is never applied")

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """``ok`` with ``data["color"]`` (None when no colour is marked), or ``failed``."""
        result = Result(host=conn.name, task=self.name, status=Status.OK, check=check)
        try:
            color = (facts if facts is not None else self.probe(conn))["color"]
        except DeployError as exc:
            result.status, result.message = Status.FAILED, exc.message
            return result
        result.data["color"] = color
        result.message = f"active colour: {color}" if color else "no active colour marked"
        return result


def active_color_task(app: str, *, settings: NginxSettings | None = None,
                      name: str | None = None) -> ActiveColorTask:
    """A read-only step reporting ``app``'s active colour in ``result.data["color"]``.

    Always ``ok`` (None when no marker exists) unless the marker is unreadable or
    holds something that is not a colour name (``failed``). Sends no write command.
    """
    return ActiveColorTask(app, settings=settings, name=name)


def active_color(conn: Connection, app: str, *,
                 settings: NginxSettings | None = None) -> str | None:
    """``app``'s active colour on ``conn``'s host (the marker), or None when none is marked.

    One read-only round trip. Raises :class:`TaskError` when the marker holds
    something that is not a colour name.
    """
    task = ActiveColorTask(app, settings=settings)
    try:
        color: str | None = task.probe(conn)["color"]
    except TaskError as exc:
        raise TaskError(exc.message, host=conn.name, task=task.name) from None
    return color

