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


def lab_from(hosts: str | None, inventory: str | Path = DEFAULT_INVENTORY,
             user: str = "root") -> Lab:
    """The lab for ``--hosts`` (a count, ``light:N`` or ``name:role,...``), else the running
    or default one (DEPLOYKIT_LAB_NAME, DEPLOYKIT_LAB_NETWORK)."""
    fleet = parse_fleet(hosts) if hosts else (load_fleet() or default_fleet())
    return Lab(fleet, inventory_path=inventory, inventory_user=user)


def described_lab(inventory: str | None) -> Lab:
    """The lab ``--inventory`` describes (its name and network are in it), else the
    default one (DEPLOYKIT_LAB_NAME, DEPLOYKIT_LAB_NETWORK) with inventories/lab.yml."""
    if inventory is None:
        return Lab(load_fleet() or default_fleet(), inventory_path=DEFAULT_INVENTORY)
    return Lab.from_inventory(inventory)


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


@task(help={"hosts": "host count (e.g. 10), 'light:200' (sshd-only hosts), 'bastion' (web and "
                     "db hosts behind a bastion; set DEPLOYKIT_LAB_INNER_NETWORK) or "
                     "'web-1:web,db-1:db'; default web-1, web-2, db-1",
            "inventory": "where to write the inventory (default inventories/lab.yml)",
            "user": "who the inventory logs in as: root (default) or deploy (sudo, become)"})
@reports_errors
def up(c: Context, hosts: str | None = None, inventory: str = str(DEFAULT_INVENTORY),
       user: str = "root") -> None:
    """Bring the lab fleet up (idempotent) and write its inventory and known_hosts."""
    lab = lab_from(hosts, inventory, user)
    started = time.monotonic()
    statuses = lab.up()
    Console().print(status_table(statuses))
    print(f"lab up in {time.monotonic() - started:.1f} s; inventory: {inventory}")


@task(help={"inventory": "a lab inventory: show the lab it describes (default: "
                         "DEPLOYKIT_LAB_NAME's lab)"})
@reports_errors
def status(c: Context, inventory: str | None = None) -> None:
    """Show each lab host with its address, roles and service states."""
    lab = described_lab(inventory)
    if load_fleet(lab.name) is None:
        print(f"lab {lab.name} is down")
        return
    Console().print(status_table(lab.status()))


@task(help={"inventory": "a lab inventory: take down the lab it describes and remove the "
                         "file (default: DEPLOYKIT_LAB_NAME's lab and inventories/lab.yml)"})
@reports_errors
def down(c: Context, inventory: str | None = None) -> None:
    """Tear the lab down: no namespace, link, mount, process or file is left."""
    lab = described_lab(inventory)
    lab.down()
    print(f"lab {lab.name} ({lab.network}) down")


lab_collection = Collection("lab", up, status, down)
