"""invoke tasks for feature flags: ``invoke flags.list``, ``flags.set``, ``flags.kill``.

Add :data:`flags_collection` to a project's tasks.py::

    from deploykit.cli.flags import flags_collection
    ns.add_collection(flags_collection, "flags")

then::

    invoke flags.set new-checkout --enable --rollout 25 --allow qa-1,qa-2 [--check]
    invoke flags.list
    invoke flags.kill new-checkout [--revive]

Every task takes ``--inventory`` (default inventories/lab.yml) and ``--host``
(the Redis host; default: the first host of group ``db``). Changes go through
the idempotent :mod:`deploykit.tasks.flags` tasks (the diff is printed); any
error is one ``error: ...`` line and exit code 1.
"""

from __future__ import annotations

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task

from deploykit.cli.errors import reports_errors
from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.flags import Flag, check_name, check_rollout
from deploykit.inventory import Host, Inventory
from deploykit.result import Result
from deploykit.task import Task
from deploykit.tasks import flags

__all__ = ["flags_collection"]

DEFAULT_INVENTORY = "inventories/lab.yml"
_COMMON = {"inventory": "inventory file (default inventories/lab.yml)",
           "host": "the Redis host (default: the first host of group db)"}


def _redis_host(inventory: str, host: str | None) -> Host:
    inv = Inventory.load(inventory)
    return inv.host(host) if host else inv.select("db")[0]


def _run(inventory: str, host: str | None, job: Task, check: bool) -> Result:
    """Run one flag task on the Redis host; print its outcome and diff; raise on failure."""
    with Connection(_redis_host(inventory, host)) as conn:
        result = job.run(conn, check=check)
    if result.failed:
        raise TaskError(result.message, host=result.host, task=result.task)
    suffix = " (check mode)" if check else ""
    print(f"{result.task} on {result.host}: {result.status.value}{suffix}")
    for line in result.diff.splitlines():
        print(f"  {line}")
    return result


def _row(flag: Flag) -> str:
    allow = ",".join(sorted(flag.allow)) or "-"
    return (f"{flag.name:<24} {'on' if flag.enabled else 'off':<7} {flag.rollout:>7g}% "
            f"{'KILLED' if flag.killed else '-':<7} {allow:<20} {flag.updated_at or '-'}")


@task(name="list", help=_COMMON)
@reports_errors
def list_(c: Context, inventory: str = DEFAULT_INVENTORY, host: str | None = None) -> None:
    """Show every feature flag: enabled, rollout, kill switch, allow-list, last change."""
    with Connection(_redis_host(inventory, host)) as conn:
        found = flags.list_flags(conn)
    print(f"{'flag':<24} {'enabled':<7} {'rollout':>8} {'killed':<7} {'allow':<20} updated_at")
    for flag in found:
        print(_row(flag))
    if not found:
        print("(no flags)")


@task(name="set", help={**_COMMON, "name": "the flag", "enable": "turn the flag on",
                        "disable": "turn the flag off", "rollout": "percentage of users, 0-100",
                        "allow": "comma-separated user ids who always get it ('' clears)",
                        "check": "show what would change, change nothing"})
@reports_errors
def set_(c: Context, name: str, enable: bool = False, disable: bool = False,
         rollout: str | None = None, allow: str | None = None, check: bool = False,
         inventory: str = DEFAULT_INVENTORY, host: str | None = None) -> None:
    """Set a flag's state idempotently (only the attributes given change)."""
    if enable and disable:
        raise ConfigError("give --enable or --disable, not both")
    enabled = True if enable else False if disable else None
    users = None if allow is None else [u.strip() for u in allow.split(",") if u.strip()]
    percent = None if rollout is None else check_rollout(rollout, check_name(name))
    _run(inventory, host, flags.flag(name, enabled=enabled, rollout=percent, allow=users), check)


@task(help={**_COMMON, "name": "the flag", "revive": "clear the kill switch instead",
            "check": "show what would change, change nothing"})
@reports_errors
def kill(c: Context, name: str, revive: bool = False, check: bool = False,
         inventory: str = DEFAULT_INVENTORY, host: str | None = None) -> None:
    """Kill a flag: off for everyone at once, its settings kept (--revive undoes it)."""
    _run(inventory, host, flags.kill(name, killed=not revive), check)


flags_collection = Collection("flags", list_, set_, kill)
"""The ``flags`` collection: ``list``, ``set``, ``kill``."""
