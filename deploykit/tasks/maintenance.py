"""Maintenance mode: nginx answers 503 with a page, except for health checks and friends.

::

    from deploykit.tasks import maintenance

    maintenance.maintenance("shop", on=True, allow=["10.0.0.7", "192.168.0.0/24"]).run(conn)
    maintenance.maintenance_status(conn, "shop").on        # True
    maintenance.maintenance("shop", on=False).run(conn)

With maintenance on, every request to the app's site gets ``503 Service
Unavailable`` with a small HTML page, ``Retry-After: <seconds>`` and
``Cache-Control: no-store``, except

* requests for the ``paths`` given (default ``/health``, exact match): load
  balancers and monitors keep seeing the app's own answer;
* requests from the ``allow``-listed addresses or networks (``$remote_addr``):
  the team can check the app before opening it again.

The files, for an app ``shop`` (paths from :class:`~deploykit.tasks.nginx.NginxSettings`):

* ``/etc/nginx/conf.d/shop_maintenance.conf`` (http level): a ``geo`` of the allowed
  addresses and a ``map`` deciding, per request, whether it gets the page;
* ``/etc/nginx/deploykit/maintenance/shop/maintenance.conf`` (server level, included
  by the site :func:`deploykit.tasks.nginx.site` writes): ``return 503`` and the
  named location serving the page;
* ``/etc/nginx/deploykit/maintenance/shop/index.html``: the page.

Turning it off removes the three files. The task is an
:class:`~deploykit.tasks.nginx.NginxConfigTask`: one read-only probe of every file
(and the site, to check it has the include), an empty plan when they already are as
wanted (``ok``, nothing sent), else one transaction: ``nginx -t`` first, the files
replaced, ``nginx -t`` again (restore on failure, with nginx's message), a verified
reload. Undo restores the previous files. A site written by an older deploykit
(without the include) is refused with a message saying to deploy once more.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.shell import quote
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.nginx import (
    HEADER,
    NginxConfigTask,
    NginxSettings,
    Want,
    check_app,
    maintenance_include,
)

__all__ = [
    "MaintenanceStatus",
    "MaintenanceTask",
    "check_allow",
    "is_on",
    "maintenance",
    "maintenance_status",
    "render_map",
    "render_page",
    "render_snippet",
]

DEFAULT_PATHS = ("/health",)
DEFAULT_RETRY_AFTER = 300
_PATH = re.compile(r"/[A-Za-z0-9._~/-]*\Z")


def _variable(app: str) -> str:
    """The nginx variable name part for ``app`` (nginx variables take no '-')."""
    return check_app(app).replace("-", "_")


def check_allow(items: Sequence[str]) -> tuple[str, ...]:
    """Allowed client addresses or networks, normalised (``10.0.0.0/8``, ``2001:db8::1``);
    a ConfigError naming the first one that is neither."""
    found = []
    for item in items:
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"maintenance allow-list: {item!r} is not an IP address or "
                              f"network (e.g. 10.0.0.7 or 10.0.0.0/24)") from None
        found.append(str(net.network_address) if net.num_addresses == 1 else str(net))
    return tuple(dict.fromkeys(found))


def render_map(app: str, allow: Sequence[str], paths: Sequence[str]) -> str:
    """The http-level file: ``geo`` of the allowed addresses, ``map`` to the decision."""
    var = _variable(app)
    lines = [HEADER.format(what="maintenance", app=app),
             f"geo $dk_maintenance_allow_{var} {{\n", "    default 0;\n"]
    lines += [f"    {a} 1;\n" for a in check_allow(allow)]
    lines += ["}\n", f'map "$dk_maintenance_allow_{var}:$uri" $dk_maintenance_{var} {{\n',
              "    default 1;\n", '    "~^1:" 0;\n']
    lines += [f'    "0:{p}" 0;\n' for p in paths]
    lines.append("}\n")
    return "".join(lines)


def render_snippet(app: str, directory: str, retry_after: int) -> str:
    """The server-level file: answer 503 when the map says so, with the page."""
    var = _variable(app)
    return "".join([
        HEADER.format(what="maintenance", app=app),
        f"if ($dk_maintenance_{var}) {{\n", "    return 503;\n", "}\n",
        f"error_page 503 @dk_maintenance_{var};\n",
        f"location @dk_maintenance_{var} {{\n",
        f"    root {directory};\n",
        "    default_type text/html;\n",
        f"    add_header Retry-After {retry_after} always;\n",
        '    add_header Cache-Control "no-store" always;\n',
        "    try_files /index.html =503;\n",
        "}\n",
    ])


def render_page(app: str, message: str | None = None) -> str:
    """The maintenance page (HTML, the app name and message escaped)."""
    text = html.escape(message or f"{app} is down for maintenance. Please try again in a "
                                  f"few minutes.")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(app)}: maintenance</title></head>\n"
            f"<body><h1>Down for maintenance</h1>\n<p>{text}</p></body></html>\n")


class MaintenanceTask(NginxConfigTask):
    """Maintenance mode on or off for ``app``'s site. See :func:`maintenance`."""

    kind: ClassVar[str] = "nginx.maintenance"

    def __init__(self, app: str, *, on: bool, allow: Sequence[str] = (),
                 paths: Sequence[str] = DEFAULT_PATHS, retry_after: int = DEFAULT_RETRY_AFTER,
                 message: str | None = None, settings: NginxSettings | None = None,
                 reload: bool = True, name: str | None = None) -> None:
        super().__init__(settings=settings, reload=reload,
                         name=name or f"nginx.maintenance {app} {'on' if on else 'off'}")
        self.app = check_app(app)
        self.on = on
        self.allow = check_allow(allow)
        for p in paths:
            if not isinstance(p, str) or not _PATH.match(p):
                raise ConfigError(f"maintenance of {app}: pass-through path {p!r} must be "
                                  f"an absolute URL path of letters, digits and '._~/-'")
        self.paths = tuple(paths)
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) \
                or not 1 <= retry_after <= 86400:
            raise ConfigError(f"maintenance of {app}: retry_after must be 1 to 86400 "
                              f"seconds, not {retry_after!r}")
        self.retry_after = retry_after
        self.message = message
        s = self.settings
        self.directory = s.maintenance_dir(self.app)
        self.map_file = f"{s.upstream_dir.rstrip('/')}/{self.app}_maintenance.conf"
        self.snippet_file = f"{self.directory}/maintenance.conf"
        self.page_file = f"{self.directory}/index.html"

    def target(self) -> str:
        return f"{self.app} {'on' if self.on else 'off'}"

    def managed(self) -> list[tuple[str, str]]:
        return [(self.map_file, "maintenance map"), (self.snippet_file, "maintenance"),
                (self.page_file, "maintenance page"),
                (self.settings.site_file(self.app), "site")]  # read only: the include

    def desired(self, conn: Connection, current: Mapping[str, Want]) -> dict[str, Want]:
        if not self.on:
            return {self.map_file: None, self.snippet_file: None, self.page_file: None}
        site_path = self.settings.site_file(self.app)
        site = current.get(site_path)
        include = f"include {maintenance_include(self.app, self.settings)};"
        if not isinstance(site, bytes):
            raise TaskError(f"{site_path}: no site for app {self.app}: deploy it first "
                            f"(maintenance mode lives in its site)")
        if include.encode() not in site:
            raise TaskError(f"{site_path} has no '{include}' (written by an older "
                            f"deploykit): deploy once more, then turn maintenance on")
        return {
            self.map_file: render_map(self.app, self.allow, self.paths).encode(),
            self.snippet_file: render_snippet(self.app, self.directory,
                                              self.retry_after).encode(),
            self.page_file: render_page(self.app, self.message).encode(),
        }

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        if self.on:
            conn.run(f"mkdir -p -- {quote(self.directory)}", task=self.name)
        super().apply(conn, facts, plan, undo)


def maintenance(app: str, *, on: bool = True, allow: Sequence[str] = (),
                paths: Sequence[str] = DEFAULT_PATHS, retry_after: int = DEFAULT_RETRY_AFTER,
                message: str | None = None, settings: NginxSettings | None = None,
                reload: bool = True, name: str | None = None) -> MaintenanceTask:
    """Turn maintenance mode of ``app``'s site on (503 + page) or off.

    Args:
        app: the app's name (its site was written by :func:`deploykit.tasks.nginx.site`).
        on: True for maintenance, False for normal service.
        allow: client addresses or networks (``10.0.0.7``, ``10.0.0.0/24``) that
            still reach the app.
        paths: URL paths (exact) that still reach the app for everyone (health checks).
        retry_after: the ``Retry-After`` header, in seconds.
        message: the page's sentence (HTML-escaped); default: "<app> is down for
            maintenance. Please try again in a few minutes."
        settings, reload, name: as for :func:`deploykit.tasks.nginx.upstream`.

    Idempotence: ``ok`` (nothing sent but the probe) when the files already hold
    this configuration (or, off, are absent). Check mode: the unified diffs.
    Apply: one tested, verified transaction; nginx's message and every file
    restored on failure. Undo: the previous files, tested and reloaded.
    """
    return MaintenanceTask(app, on=on, allow=allow, paths=paths, retry_after=retry_after,
                           message=message, settings=settings, reload=reload, name=name)


@dataclass(frozen=True)
class MaintenanceStatus:
    """Whether maintenance is on for an app on one host, since when (epoch, the
    snippet's mtime) and for which addresses it is not."""

    on: bool
    since: float | None = None
    allow: tuple[str, ...] = ()


def maintenance_status(conn: Connection, app: str, *,
                       settings: NginxSettings | None = None) -> MaintenanceStatus:
    """Read ``app``'s maintenance state on ``conn``'s host (one read-only round trip)."""
    task = MaintenanceTask(app, on=False, settings=settings)
    script = (f"f={quote(task.snippet_file)}; m={quote(task.map_file)}; "
              'if [ -f "$f" ]; then printf "since %s\\n" "$(stat -c %Y -- "$f")"; '
              '[ -f "$m" ] && cat -- "$m"; fi; exit 0')
    out = conn.run(script, write=False, check=False, task="maintenance status").stdout
    lines = out.splitlines()
    if not lines or not lines[0].startswith("since "):
        return MaintenanceStatus(False)
    try:
        since: float | None = float(lines[0].split()[1])
    except (IndexError, ValueError):
        since = None
    allow = tuple(m[1] for line in lines[1:]
                  if (m := re.fullmatch(r"\s+([0-9A-Fa-f:./]+) 1;", line)))
    return MaintenanceStatus(True, since, allow)


def is_on(conn: Connection, app: str, *, settings: NginxSettings | None = None) -> bool:
    """True when maintenance mode is on for ``app`` on ``conn``'s host (one read)."""
    return maintenance_status(conn, app, settings=settings).on

