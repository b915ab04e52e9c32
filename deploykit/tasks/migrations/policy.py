"""Expand/contract: may older code run over the migrations the database has?

A migration is **expand** (backward-compatible: a new table, a nullable column, an
index; the previous release keeps working) or **contract** (drops or renames what older
code reads). The contract's ``migrate.kinds`` names them (``{"notes.0002_note_done":
"expand"}``); ``migrate.default_kind`` covers the rest and is ``contract`` unless set:
an unmarked migration is never assumed safe.

Deploying or rolling back to an older release is allowed when every applied migration
it does not know is an expand one; past a contract migration it is refused, unless the
database is restored with it (``--with-db-restore``)::

    verdict = policy.judge(applied=state.applied, known=older_state_ids,
                           kinds=contract.migrate.kinds, with_db_restore=False)
    if not verdict.allowed:
        raise ConfigError(verdict.reason)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from deploykit.errors import ConfigError

__all__ = ["KINDS", "Kind", "Verdict", "judge", "kind_of"]

Kind = Literal["expand", "contract"]
KINDS: tuple[Kind, ...] = ("expand", "contract")


@dataclass(frozen=True)
class Verdict:
    """The answer of :func:`judge`, with what it was based on."""

    allowed: bool
    newer: tuple[str, ...]        # applied, unknown to the older release (oldest first)
    contract: tuple[str, ...]     # those of them marked contract
    needs_restore: bool           # allowed only because the database is restored with it
    reason: str                   # one line for the plan, the report or the refusal


def kind_of(migration: str, kinds: Mapping[str, str], default: str = "contract") -> Kind:
    """A migration's kind: ``kinds[migration]``, else ``default``; anything else is a
    :class:`ConfigError` naming the key."""
    value = kinds.get(migration, default)
    if value not in KINDS:
        where = f"migrate.kinds[{migration!r}]" if migration in kinds else \
            "migrate.default_kind"
        raise ConfigError(f"{where}: {value!r} is not one of expand, contract")
    return value


def judge(*, applied: Sequence[str], known: Collection[str], kinds: Mapping[str, str],
          default: str = "contract", with_db_restore: bool = False,
          target: str = "the older release") -> Verdict:
    """May ``target`` (whose migrations are ``known``) run over the ``applied`` ones?

    Over none newer: yes. Over expand-only newer ones: yes, and they stay applied. Past
    a contract one: no, unless ``with_db_restore`` (the pre-deploy backup goes back with
    the code, so the newer migrations go too).
    """
    newer = tuple(m for m in applied if m not in known)
    contract = tuple(m for m in newer if kind_of(m, kinds, default) == "contract")
    if not newer:
        return Verdict(True, newer, contract, False,
                       f"{target} knows every applied migration")
    if not contract:
        return Verdict(True, newer, contract, False,
                       f"{target} runs over newer expand migrations (they stay applied): "
                       f"{', '.join(newer)}")
    if with_db_restore:
        return Verdict(True, newer, contract, True,
                       f"past contract migration(s) {', '.join(contract)}: allowed with the "
                       f"database restored from the backup taken before they ran")
    return Verdict(False, newer, contract, False,
                   f"refused: {target} predates contract migration(s) {', '.join(contract)} "
                   f"(not backward-compatible); roll them back first, or use "
                   f"--with-db-restore to restore the database with the code")
