"""The project's own invoke tasks: the lab, the demo and the test suite.

    invoke lab.up [--hosts 10]   bring the lab fleet up
    invoke lab.status            show it
    invoke lab.down              tear it down, leaving nothing behind
    invoke demo                  lab up, one command on every host over SSH, a table, lab down
    invoke test [--args ARGS]    the whole test suite (unit + lab)
    invoke flags.list|set|kill   feature flags in Redis
"""

from __future__ import annotations

import sys
import time

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.console import Console
from rich.table import Table

from deploykit.cli import reports_errors
from deploykit.connection import connect_all
from deploykit.errors import DeployError
from deploykit.flagtasks import flags_collection
from deploykit.inventory import Inventory
from deploykit.testing.labtasks import DEFAULT_INVENTORY, lab_collection, lab_from


@task(help={"hosts": "lab host count or 'name:role,...' (default web-1, web-2, db-1)",
            "keep": "leave the lab up afterwards"})
@reports_errors
def demo(c: Context, hosts: str | None = None, keep: bool = False) -> None:
    """Bring the lab up, run one command on every host over SSH, print a table, tear down."""
    lab = lab_from(hosts)
    console = Console()
    try:
        started = time.monotonic()
        lab.up()
        console.print(f"lab up in {time.monotonic() - started:.1f} s")
        inventory = Inventory.load(DEFAULT_INVENTORY)
        hosts_ = inventory.select("all")
        table = Table(title="one command on every lab host, over SSH")
        for column in ("host", "address", "hostname", "kernel", "listening", "ms"):
            table.add_column(column)
        for name, conn in connect_all(hosts_).items():
            if isinstance(conn, DeployError):
                table.add_row(name, "-", f"[red]{conn}[/]", "", "", "")
                continue
            result = conn.run("hostname; uname -r; ss -Htln | awk '{print $4}' | "
                              "sed 's/.*://' | sort -un | tr '\\n' ' '", write=False)
            lines = [*result.stdout.splitlines(), "", "", ""]
            table.add_row(name, conn.host.address, lines[0], lines[1], lines[2],
                          f"{result.duration * 1000:.1f}")
            conn.close()
        console.print(table)
    finally:
        if not keep:
            lab.down()
            console.print("lab down")


@task(help={"args": "extra pytest arguments, e.g. '-k inventory -x'"})
def test(c: Context, args: str = "") -> None:
    """Run the whole test suite (unit tests and lab tests over real SSH)."""
    result = c.run(f"{sys.executable} -m pytest {args}", warn=True, pty=False)
    code = result.exited if result is not None else 1
    if code:
        raise Exit(code=code)


ns = Collection(demo, test)
ns.add_collection(lab_collection, "lab")
ns.add_collection(flags_collection, "flags")
