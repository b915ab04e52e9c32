"""The release ledger: every release's life on one host, for both runtimes.

One JSON line per state change, appended to ``ledger.jsonl`` in the app's directory on
each web host (``/srv/<app>/ledger.jsonl`` for releases, ``/srv/compose/<app>.ledger.jsonl``
for compose stacks)::

    {"release": "v2", "state": "verified", "deploy_id": "...", "color": "green",
     "time": 1760000000.0, "rollback": false, "env": "/srv/shop/env/v2-1a2b3c.env"}

States (:class:`~deploykit.strategies.base.ReleaseState`): ``prepared`` -> ``live`` ->
``verified`` | ``failed`` -> ``rolled_back``. The ledger is the record the rollback
target comes from, **by the order releases served**, never by install time:

* :func:`serving_stack`: the releases that passed verification while serving, in order;
  a deploy pushes, a rollback pops back to its target (so rolling back twice steps
  further back, and re-deploying an old version is a deploy like any other).
* :func:`rollback_target`: what served before the live release (``failed`` excluded).
* :func:`accepts_target`: only a release that passed verification (and is not
  ``failed`` since) may be rolled back to.

Appending is one short ``O_APPEND`` write (atomic below ``PIPE_BUF``); reading is one
``cat``. A line that does not parse is skipped (a torn write from a crash).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.shell import quote
from deploykit.strategies.base import ReleaseState
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = ["Entry", "LedgerTask", "accepts_target", "entry_of", "fleet_target", "parse",
           "read", "record", "rollback_target", "serving_stack", "states"]

LEDGER_FILE = "ledger.jsonl"
TAIL = 2000
"""How many of the newest lines a read keeps (plenty for any rollback decision)."""


@dataclass(frozen=True)
class Entry:
    """One state change of one release on one host."""

    release: str
    state: ReleaseState
    deploy_id: str
    color: str | None = None
    time: float = 0.0
    rollback: bool = False
    env: str | None = None
    reason: str = ""

    def to_line(self) -> str:
        """The JSON line appended to the ledger."""
        data: dict[str, Any] = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def parse(text: str) -> list[Entry]:
    """The entries of a ledger file's text, oldest first (bad lines skipped)."""
    found: list[Entry] = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            found.append(Entry(str(data["release"]), ReleaseState(data["state"]),
                               str(data.get("deploy_id", "")), data.get("color"),
                               float(data.get("time", 0.0)), bool(data.get("rollback")),
                               data.get("env"), str(data.get("reason", ""))))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def read(conn: Connection, path: str) -> list[Entry]:
    """The ledger at ``path`` on ``conn``'s host (empty when there is none yet)."""
    result = conn.run(f"tail -n {TAIL} -- {quote(path)} 2>/dev/null || true", write=False)
    return parse(result.stdout)


def states(entries: Sequence[Entry]) -> dict[str, ReleaseState]:
    """Each release's latest state."""
    return {e.release: e.state for e in entries}


def entry_of(entries: Sequence[Entry], release: str,
             state: ReleaseState | None = None) -> Entry | None:
    """The newest entry of ``release`` (in ``state``, when given)."""
    for e in reversed(entries):
        if e.release == release and (state is None or e.state == state):
            return e
    return None


def serving_stack(entries: Sequence[Entry]) -> list[str]:
    """The releases that served verified, in order: a deploy's ``verified`` pushes its
    release; a rollback's pops back to its release (or pushes it when it is not there)."""
    stack: list[str] = []
    for e in entries:
        if e.state != ReleaseState.VERIFIED:
            continue
        if e.rollback and e.release in stack:
            while stack[-1] != e.release:
                stack.pop()
        elif not stack or stack[-1] != e.release:
            stack.append(e.release)
    return stack


def rollback_target(entries: Sequence[Entry], live: str | None = None) -> str | None:
    """What served before the live release (default: the top of the stack), skipping
    releases whose latest state is ``failed``; None when there is none."""
    latest = states(entries)
    stack = serving_stack(entries)
    if live is None:
        live = stack[-1] if stack else None
    if live in stack:
        stack = stack[:len(stack) - 1 - stack[::-1].index(live)]
    for release in reversed(stack):
        if release != live and latest.get(release) != ReleaseState.FAILED:
            return release
    return None


def accepts_target(entries: Sequence[Entry], release: str) -> bool:
    """True when ``release`` passed verification on this host and has not failed since."""
    latest = states(entries).get(release)
    return (entry_of(entries, release, ReleaseState.VERIFIED) is not None
            and latest != ReleaseState.FAILED)


def fleet_target(ledgers: Mapping[str, Sequence[Entry]], live: Mapping[str, str | None],
                 to: str | None = None) -> str:
    """The rollback target, the same on every host: ``to`` (which must have passed
    verification on every host), else each host's :func:`rollback_target`.

    Raises :class:`ConfigError` naming the host when there is none or the hosts differ.
    """
    if to is not None:
        refused = [h for h, entries in ledgers.items() if not accepts_target(entries, to)]
        if refused:
            raise ConfigError(f"release {to} never passed verification (or failed since) on "
                              f"{', '.join(sorted(refused))}: only verified releases can be "
                              f"rolled back to")
        return to
    found = {h: rollback_target(entries, live.get(h)) for h, entries in ledgers.items()}
    missing = sorted(h for h, t in found.items() if t is None)
    if missing:
        raise ConfigError(f"no verified release served before the live one on "
                          f"{', '.join(missing)}: nothing to roll back to")
    if len(set(found.values())) > 1:
        shown = ", ".join(f"{h} {t}" for h, t in sorted(found.items()))
        raise ConfigError(f"the hosts' rollback targets differ ({shown}); name one with --to")
    return next(iter(found.values()))  # type: ignore[return-value]


class LedgerTask(Task):
    """Append one entry unless the release's latest entry already says the same (state,
    deploy id and colour): recording a state twice changes nothing."""

    kind: ClassVar[str] = "ledger.record"

    def __init__(self, path: str, entry: Entry, *, name: str | None = None) -> None:
        super().__init__(name=name)
        if not path.startswith("/") or "\n" in path:
            raise ConfigError(f"ledger path must be absolute, not {path!r}")
        self.path = path
        self.entry = entry

    def target(self) -> str:
        return f"{self.entry.release} {self.entry.state.value}"

    def probe_script(self) -> str:
        return f"tail -n {TAIL} -- {quote(self.path)} 2>/dev/null || true"

    def parse(self, output: str) -> Facts:
        return {"entries": parse(output)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        last = entry_of(facts["entries"], self.entry.release)
        same = (last is not None and last.state == self.entry.state
                and last.deploy_id == self.entry.deploy_id and last.color == self.entry.color)
        if not same:
            plan.add(f"release {self.entry.release}",
                     last.state.value if last else "(none)", self.entry.state.value)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        line = self.entry.to_line() if self.entry.time else \
            Entry(**{**asdict(self.entry), "time": time.time()}).to_line()
        directory = self.path.rsplit("/", 1)[0] or "/"
        result = conn.run(f"mkdir -p -- {quote(directory)} && "
                          f"printf '%s\\n' {quote(line)} >> {quote(self.path)}", check=False)
        if result.failed:
            raise TaskError(f"cannot append to {self.path}: {result.stderr.strip()}",
                            host=conn.name, task=self.name)


def record(path: str, release: str, state: ReleaseState, *, deploy_id: str,
           color: str | None = None, rollback: bool = False, env: str | None = None,
           reason: str = "", name: str | None = None) -> LedgerTask:
    """A step recording ``release`` as ``state`` in the ledger at ``path`` (see the module
    docstring). Idempotent; no undo (the ledger is history)."""
    return LedgerTask(path, Entry(release, state, deploy_id, color, 0.0, rollback, env,
                                  reason),
                      name=name or f"ledger: {release} {state.value}")
