"""deploykit's command line: invoke collections and what they print.

Add the whole command set to a project's ``tasks.py``::

    from invoke.collection import Collection
    from deploykit.cli import add_tasks

    ns = Collection()
    add_tasks(ns)   # deploy, rollback, status, history, backup, restore, verify, lock,
                    # unlock, config, exec, logs, maintenance, details, prune, canary.*,
                    # flags.*

Modules: :mod:`~deploykit.cli.deploy` (the deploy commands), :mod:`~deploykit.cli.ops`
(day-2 commands), :mod:`~deploykit.cli.flags` (feature flags), :mod:`~deploykit.cli.output`
(``Output``, tables, summaries), :mod:`~deploykit.cli.errors` (``reports_errors``).
"""

from __future__ import annotations

from invoke.collection import Collection

from deploykit.cli.errors import reports_errors
from deploykit.cli.output import Output

__all__ = ["Output", "add_tasks", "reports_errors"]


def add_tasks(ns: Collection, *, flags: bool = True) -> Collection:
    """Add every deploykit command to ``ns``: the deploy commands and the day-2 commands
    at the top level (``invoke deploy``, ``invoke logs``), feature flags as ``flags.*``."""
    from deploykit.cli.deploy import add_deploy_tasks
    from deploykit.cli.ops import add_ops_tasks

    add_deploy_tasks(ns)
    add_ops_tasks(ns)
    if flags:
        from deploykit.cli.flags import flags_collection

        ns.add_collection(flags_collection, "flags")
    return ns
