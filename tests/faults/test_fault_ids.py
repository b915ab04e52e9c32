"""Deploy ids must tell concurrent deploys apart (no lab needed).

Found by test_fault_controller.py's two deploys started at once: both got the id
``<UTC second>-<commit>``, so the loser's run report and log overwrote the winner's
(``.deploykit/runs/<id>.json``) and its lock error named "its own" deploy id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from deploykit import journal

NOW = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)


def test_two_deploys_started_in_the_same_second_get_different_ids(tmp_path: Path) -> None:
    first, second = (journal.new_deploy_id(tmp_path, now=NOW) for _ in range(2))
    assert first != second
    assert first.startswith("20261125T173000Z-") and second.startswith("20261125T173000Z-")
