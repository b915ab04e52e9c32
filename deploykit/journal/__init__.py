"""Deploy ids, the host-side deploy lock, the host-side history, local run files.

A deploy goes through these pieces in order::

    deploy_id = new_deploy_id(repo_dir)          # 20261125T173000Z-042-abc1234-3f9a
    with fleet_lock(conns, "shop", deploy_id, version_to="v2", strategy="rolling") as lock:
        report = Runner(steps, run_id=deploy_id).run(hosts)
        lock.end("failed" if report.failed else "succeeded", steps=report)
    write_run_report(report)                             # .deploykit/runs/<id>.json

**Lock.** ``/var/lib/deploykit/<app>/lock`` on every target host, taken with an
atomic ``mkdir`` (exactly one ``mkdir`` of a directory succeeds), holding
``holder.json`` (user, controller host, deploy id, pid, start time and a random
token that only the holder knows, so a release never removes somebody else's
lock). A short ``flock`` on ``/var/lib/deploykit/<app>/.guard`` serialises the
inspect-then-act scripts (acquire, break, release), so two breakers cannot
both break one lock, nor break a lock taken in between. :func:`fleet_lock`
locks every host, all-or-nothing (the first host by name alone, as the arbiter
between racing deploys, then the others in parallel), and releases on
success, on an exception and on Ctrl-C. A lock older than its TTL is *stale*: it is reported
(with its age), never broken silently; ``break_lock=True`` breaks a stale lock
and :func:`unlock` (``force=True``) breaks any, both recorded in the history.

**Re-entrance.** A run started from inside another (a hook running ``invoke
rollback``, say) finds the lock held by the outer deploy and would wait for
itself. The outer deploy passes its id to its children as ``$DEPLOYKIT_DEPLOY_ID``
(:data:`DEPLOY_ID_ENV`); a lock held by that deploy id, by the same user on the
same controller, is then taken as *nested*: the child writes its own start and
end entries but leaves the lock to its owner. **Waiting.** With ``wait``,
:func:`fleet_lock` polls a held lock until it is free or ``wait`` seconds have
passed (``invoke deploy --lock-wait 5m``), telling ``on_wait`` at every poll.

**History.** ``/var/lib/deploykit/<app>/history.jsonl`` on every target host,
one JSON object per line. A deploy writes a ``start`` entry in the same round
trip as its lock and an ``end`` entry (result ``succeeded``, ``failed``,
``rolled_back`` or ``aborted``) in the same round trip as its release: a
deploy that crashed shows as started without an end (:func:`summarize_history`).
Appending is atomic: the lines travel on stdin into a temporary file beside
the history, are checked to be complete (their byte count), then appended with
``dd oflag=append bs=<their size>``: **one** ``write(2)`` on an ``O_APPEND``
descriptor. Concurrent appenders never interleave, and a connection dropped
mid-upload writes nothing rather than half a line. (``cat >> file`` would not
do: ``cat`` writes each chunk as it arrives from the SSH channel.)

**Local files.** ``.deploykit/runs/<deploy_id>.json`` (the
:class:`~deploykit.result.RunReport`) and ``.deploykit/runs/<deploy_id>.log``
(:class:`RunLog`: deploykit's log records for the run), both 0600, secrets
redacted. Every history entry is redacted too (:func:`~deploykit.secrets.redact`
with the connection's secrets) before it leaves the controller.
"""

from __future__ import annotations

from deploykit.journal.fleetlock import FleetLock, LockLostError, fleet_lock
from deploykit.journal.history import (
    DeployRecord,
    HistoryEntry,
    append_history,
    history,
    parse_history,
    steps_summary,
    summarize_history,
)
from deploykit.journal.hostlock import (
    LockAttempt,
    LockHolder,
    LockInfo,
    acquire_lock,
    lock_status,
    pid_alive,
    refresh_lock,
    release_lock,
    unlock,
)
from deploykit.journal.ids import (
    DEFAULT_LOCK_TTL,
    DEPLOY_ID_ENV,
    NEST_TOKEN_ENV,
    RESULTS,
    RUNS_DIR,
    STATE_ROOT,
    DeployResult,
    Kind,
    nest_proof,
    new_deploy_id,
    outer_deploy_id,
    state_dir,
)
from deploykit.journal.runfiles import (
    LOG_LEVEL_ENV,
    RunFiles,
    RunLog,
    log_level,
    run_files,
    write_run_report,
)

__all__ = [
    "DEFAULT_LOCK_TTL",
    "DEPLOY_ID_ENV",
    "LOG_LEVEL_ENV",
    "NEST_TOKEN_ENV",
    "RESULTS",
    "RUNS_DIR",
    "STATE_ROOT",
    "DeployRecord",
    "DeployResult",
    "FleetLock",
    "HistoryEntry",
    "Kind",
    "LockAttempt",
    "LockHolder",
    "LockInfo",
    "LockLostError",
    "RunFiles",
    "RunLog",
    "acquire_lock",
    "append_history",
    "fleet_lock",
    "history",
    "lock_status",
    "log_level",
    "nest_proof",
    "new_deploy_id",
    "outer_deploy_id",
    "parse_history",
    "pid_alive",
    "refresh_lock",
    "release_lock",
    "run_files",
    "state_dir",
    "steps_summary",
    "summarize_history",
    "unlock",
    "write_run_report",
]
