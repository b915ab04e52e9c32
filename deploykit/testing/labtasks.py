"""invoke tasks for the lab: ``invoke lab.up``, ``lab.status``, ``lab.down``.

Import :data:`lab_collection` into a project's tasks.py::

    from deploykit.testing.labtasks import lab_collection
    ns.add_collection(lab_collection, "lab")
"""

from __future__ import annotations

import time
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task
from rich.console import Console
from rich.table import Table

from deploykit.cli import reports_errors
from deploykit.testing.lab import Lab, LabHostStatus, default_fleet, load_fleet, parse_fleet

DEFAULT_INVENTORY = Path("inventories/lab.yml")


def lab_from(hosts: str | None, inventory: str | Path = DEFAULT_INVENTORY) -> Lab:
    """The lab for ``--hosts`` (a count or ``name:role,...``), else the running or default one."""
    fleet = parse_fleet(hosts) if hosts else (load_fleet() or default_fleet())
    return Lab(fleet, inventory_path=inventory)


def status_table(statuses: list[LabHostStatus]) -> Table:
    """A rich table: host, address, roles, and each service's state."""
    table = Table(title="deploykit lab")
    for column in ("host", "address", "roles", "state", "services"):
        table.add_column(column)
    for h in statuses:
        services = ", ".join(
            f"[green]{name}[/]" if state == "running" else f"[red]{name} {state}[/]"
            for name, state in h.services.items())
        table.add_row(h.name, h.address, ",".join(h.roles) or "-",
                      "[green]up[/]" if h.up else "[red]down[/]", services)
    return table


@task(help={"hosts": "host count (e.g. 10) or 'web-1:web,db-1:db'; default web-1, web-2, db-1",
            "inventory": "where to write the inventory (default inventories/lab.yml)"})
@reports_errors
def up(c: Context, hosts: str | None = None, inventory: str = str(DEFAULT_INVENTORY)) -> None:
    """Bring the lab fleet up (idempotent) and write its inventory and known_hosts."""
    lab = lab_from(hosts, inventory)
    started = time.monotonic()
    statuses = lab.up()
    Console().print(status_table(statuses))
    print(f"lab up in {time.monotonic() - started:.1f} s; inventory: {inventory}")


@task(help={"inventory": "the lab inventory (default inventories/lab.yml)"})
@reports_errors
def status(c: Context, inventory: str = str(DEFAULT_INVENTORY)) -> None:
    """Show each lab host with its address, roles and service states."""
    fleet = load_fleet()
    if fleet is None:
        print("lab is down")
        return
    Console().print(status_table(Lab(fleet, inventory_path=inventory).status()))


@task(help={"inventory": "the lab inventory to remove (default inventories/lab.yml)"})
@reports_errors
def down(c: Context, inventory: str = str(DEFAULT_INVENTORY)) -> None:
    """Tear the lab down: no namespace, link, mount, process or file is left."""
    Lab(load_fleet() or default_fleet(), inventory_path=inventory).down()
    print("lab down")


lab_collection = Collection("lab", up, status, down)
