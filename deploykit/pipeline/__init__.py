"""The deploy pipeline: what every command does, in layers (no invoke, no printing).

==================  ===========================================================
``project``         deploykit.yml + inventory + environment: :class:`Project`
``fleet``           one connection per host; what each host serves (read-only)
``preflight``       the read-only checks before anything changes
``run``             the frame of a run: options, summary, run files, hooks, notify
``events``          typed run events (hooks, notifications, the screen follow them)
``signals``         Ctrl-C / SIGTERM: stop at the next phase, then clean up
``deploy``          pre-flight, lock, backup, strategy, journal, notify
``rollback``        the app back, migrations down, the database back
``restore``         database backup and restore (``invoke backup|restore``)
``status``          status, history, verify
``locks``           ``invoke lock|unlock``
==================  ===========================================================

The lock itself, the history and deploy ids live in :mod:`deploykit.journal`.
"""

from __future__ import annotations

from deploykit.pipeline.deploy import deploy
from deploykit.pipeline.events import Display, EventBus, LogDisplay, Phase
from deploykit.pipeline.fleet import HostView, connected, fleet_views
from deploykit.pipeline.preflight import preflight
from deploykit.pipeline.project import CONFIG_ENV, Project, config_path, ensure_artifact
from deploykit.pipeline.restore import backup_now, restore_backup
from deploykit.pipeline.rollback import rollback
from deploykit.pipeline.run import DeployOptions, DeploySummary
from deploykit.pipeline.status import HostStatus, fleet_status, history_records, verify_fleet

__all__ = [
    "CONFIG_ENV",
    "DeployOptions",
    "DeploySummary",
    "Display",
    "EventBus",
    "HostStatus",
    "HostView",
    "LogDisplay",
    "Phase",
    "Project",
    "backup_now",
    "config_path",
    "connected",
    "deploy",
    "ensure_artifact",
    "fleet_status",
    "fleet_views",
    "history_records",
    "preflight",
    "restore_backup",
    "rollback",
    "verify_fleet",
]
