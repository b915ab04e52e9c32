"""One way to show sizes, ages and durations, and one duration grammar."""

from __future__ import annotations

import pytest

from deploykit import humanize, retry
from deploykit.errors import ConfigError, LockHeldError
from deploykit.tasks import notify


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("500ms", 0.5), ("5m", 300.0), ("5min", 300.0),
    ("1.5h", 5400.0), ("1d", 86400.0), (" 2 h ", 7200.0), (45, 45.0), (None, 0.0), ("", 0.0),
])
def test_one_duration_grammar(text: str | int | None, seconds: float) -> None:
    assert humanize.parse_duration(text) == seconds
    assert retry.parse_duration(text) == seconds  # the same function, not a copy


@pytest.mark.parametrize("text", ["5x", "m5", "-3s", "1 h 5 min"])
def test_a_bad_duration_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--since: .* is not a duration"):
        humanize.parse_duration(text, "--since")


@pytest.mark.parametrize(("seconds", "shown"), [
    (42, "42 s"), (125, "2 min"), (7500, "2.1 h"), (3 * 86400, "3.0 days")])
def test_durations_and_ages_read_the_same(seconds: float, shown: str) -> None:
    assert humanize.duration(seconds) == humanize.age(seconds) == shown


def test_lock_wait_and_notifications_use_the_shared_format() -> None:
    lines: list[str] = []
    retry.LockWaitReporter(wait=300, echo=lines.append)(LockHeldError("held by bob"), 0.0)
    assert lines == ["   waiting up to 5 min for the lock: held by bob"]
    event = notify.DeployEvent("success", "d1", app="shop", duration=7500)
    assert "after 2.1 h" in notify.slack("http://127.0.0.1:9/x").payload(event)["text"]
