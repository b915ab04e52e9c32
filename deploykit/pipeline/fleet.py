"""One connection per host, and what each host serves (read-only views)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from deploykit import journal
from deploykit.connection import Connection, connect_all
from deploykit.errors import ConnectError
from deploykit.inventory import Host
from deploykit.pipeline.project import Project
from deploykit.result import RunReport
from deploykit.secrets import Secret
from deploykit.tasks import nginx, releases
from deploykit.tasks.releases import ReleaseInfo

log = logging.getLogger("deploykit.pipeline.fleet")

_T = TypeVar("_T")
@contextmanager
def reachable(hosts: Sequence[Host], secrets: Sequence[Secret] = ()
              ) -> Iterator[tuple[dict[str, Connection], dict[str, str]]]:
    """For read-only commands: an open connection per host that answers, and why each
    other host could not be reached (a host down never hides the others)."""
    opened = connect_all(hosts)
    conns = {n: c for n, c in opened.items() if isinstance(c, Connection)}
    try:
        for conn in conns.values():
            conn.secrets.update(secrets)
        yield conns, {n: str(e) for n, e in opened.items() if not isinstance(e, Connection)}
    finally:
        for conn in conns.values():
            conn.close()


@contextmanager
def connected(hosts: Sequence[Host], secrets: Sequence[Secret] = (),
              report: RunReport | None = None) -> Iterator[dict[str, Connection]]:
    """One open connection per host (in parallel), closed at the end; a host that cannot
    be reached is a :class:`ConnectError` naming every such host (each marked
    unreachable in ``report``, when given)."""
    opened = connect_all(hosts)
    conns = {n: c for n, c in opened.items() if isinstance(c, Connection)}
    try:
        failed = [f"{n}: {e}" for n, e in opened.items() if isinstance(e, ConnectError)]
        for n, e in opened.items():
            if report is not None and isinstance(e, ConnectError):
                report.mark_unreachable(n, str(e))
        if failed:
            raise ConnectError("cannot reach " + "; ".join(failed))
        for conn in conns.values():
            conn.secrets.update(secrets)
        yield conns
    finally:
        for conn in conns.values():
            conn.close()


def in_parallel(items: Sequence[Any], work: Callable[[Any], _T]) -> list[_T]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(10, len(items))) as pool:
        return list(pool.map(work, items))


def who_am_i() -> str:
    """``user@controller`` as the journal writes it in lock holders."""
    return journal.LockHolder.for_this_process("x", "x").who


# == what the hosts run =======================================================================


@dataclass
class HostView:
    """What one host runs: the active colour and the releases (read-only)."""

    name: str
    color: str | None
    releases: list[ReleaseInfo]

    def linked(self, link: str) -> ReleaseInfo | None:
        """The release ``link`` (``current``, ``blue``, ``green``) points at."""
        return next((r for r in self.releases if link in r.links), None)

    @property
    def live(self) -> ReleaseInfo | None:
        """The release the active colour serves."""
        return self.linked(self.color) if self.color else None

    @property
    def version(self) -> str | None:
        """The version the host serves."""
        live = self.live
        return live.version if live is not None else None


def host_view(conn: Connection, app: str) -> HostView:
    """Two read-only round trips: the active colour and the releases."""
    return HostView(conn.name, nginx.active_color(conn, app), releases.list_releases(conn, app))


def fleet_views(conns: Mapping[str, Connection], hosts: Sequence[Host],
                app: str) -> dict[str, HostView]:
    """:func:`host_view` of every host, in parallel."""
    views = in_parallel(list(hosts), lambda h: host_view(conns[h.name], app))
    return {v.name: v for v in views}


def common_color(views: Mapping[str, HostView]) -> str | None:
    """The colour every host serves (None when none serves or they differ)."""
    colors = {v.color for v in views.values()}
    return colors.pop() if len(colors) == 1 else None


def versions_from(project: Project, views: Mapping[str, HostView]) -> dict[str, str]:
    """Each web host's version; the db host gets the fleet's, when the hosts agree."""
    found = {n: v.version for n, v in views.items() if v.version}
    if project.db is not None and len(set(found.values())) == 1:
        found[project.db.name] = next(iter(found.values()))
    return found


