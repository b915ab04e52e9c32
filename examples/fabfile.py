"""A fabfile that uses deploykit tasks on fabric's own connections.

    fab -H web-1,web-2 site --root /srv/site
    fab -H web-1 motd

fabric gives the Connection (``-H``, ssh_config aliases, gateways); deploykit gives
idempotent tasks with diffs, undo on failure, strict host keys and one recap. The
known_hosts file is ``DEPLOYKIT_KNOWN_HOSTS`` when set, else the ssh_config's or
``~/.ssh/known_hosts``.
"""

from __future__ import annotations

import os
import sys

from fabric import Connection, Group, task

from deploykit.fabric_interop import run_on_fabric
from deploykit.report import format_recap_plain
from deploykit.result import RunReport
from deploykit.secrets import redact
from deploykit.tasks import files


def _known_hosts() -> str | None:
    return os.environ.get("DEPLOYKIT_KNOWN_HOSTS")


def _finish(report: RunReport) -> RunReport:
    print(format_recap_plain(report))
    for name, host in report.hosts.items():  # why a host failed, not only that it did
        problems = ([host.error] if host.error else []) + [
            f"{r.task}: {r.message}" for r in host.results if r.failed]
        for text in problems:
            print(redact(f"error: {name}: {text}", report.secrets), file=sys.stderr)
    if report.failed:
        raise SystemExit(1)
    return report


@task  # type: ignore[untyped-decorator]  # fabric's decorator is untyped
def motd(c: Connection, path: str = "/etc/motd") -> RunReport:
    """Write the message of the day on one host (``fab -H web-1 motd``)."""
    step = files.file(path, "managed by deploykit\n", mode=0o644)
    return _finish(run_on_fabric(step, c, known_hosts=_known_hosts()))


def site(target: Connection | Group, root: str = "/srv/site") -> RunReport:
    """A site directory and its config on every host of ``target``; if any host fails,
    every host is put back as it was (``undo="fleet"``)."""
    steps = [files.directory(root, mode=0o755),
             files.file(f"{root}/site.conf", f"root={root}\n", mode=0o640)]
    return _finish(run_on_fabric(steps, target, known_hosts=_known_hosts(), undo="fleet"))


@task  # type: ignore[untyped-decorator]
def site_task(c: Connection, root: str = "/srv/site") -> RunReport:
    """``fab -H web-1,web-2 site-task --root /srv/site``: fab calls this once per host;
    scripts pass a whole ``fabric.Group`` to :func:`site` for one run and one recap."""
    return site(c, root)
