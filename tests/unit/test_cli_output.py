"""What the CLI prints: user text never reaches rich as markup (issue 21 item 14), an
unreachable host is a row of the status (issue 21 item 13), run events render."""

from __future__ import annotations

import io

from rich.console import Console

from deploykit.cli.output import Output, show_history, show_status
from deploykit.journal import DeployRecord
from deploykit.pipeline.status import HostStatus

HOSTILE = "[/ops] deployed by [bold]mallory[/bold] [link=http://x]x[/link] \\[/"


def output() -> tuple[Output, io.StringIO]:
    buffer = io.StringIO()
    return Output(Console(file=buffer, width=400, color_system=None)), buffer


def test_history_shows_any_message_as_plain_text() -> None:
    out, buffer = output()
    show_history(out, [{"id": "20261125T173000Z-042-abc1234-3f9a", "kind": "deploy",
                        "who": "ops@[ctl]", "started": "", "version_from": {"web-1": "v1"},
                        "version_to": "v2[/x]", "strategy": "bluegreen", "result": "failed",
                        "duration": 3.0, "message": HOSTILE}])
    text = buffer.getvalue()
    assert "[/ops] deployed by [bold]mallory[/bold]" in text
    assert "ops@[ctl]" in text and "v1 -> v2[/x]" in text


def test_status_shows_hostile_text_and_unreachable_hosts() -> None:
    out, buffer = output()
    last = DeployRecord(id="d1", kind="deploy", who="x", host="web-1", started="",
                        ended=None, version_from="v1", version_to="[/ops]", strategy=None,
                        result="failed", duration=None, steps={}, message=HOSTILE)
    show_status(out, [HostStatus("web-1", "web", color="blue", version="[/ops]", last=last),
                      HostStatus("web-2", "web", error="unreachable: [/ops] timed out")])
    text = buffer.getvalue()
    assert "v1 -> [/ops] failed (d1)" in text
    assert "ERROR unreachable: [/ops] timed out" in text


def test_lines_are_never_markup() -> None:
    out, buffer = output()
    out.line(HOSTILE, style="bold")
    assert buffer.getvalue().strip() == HOSTILE
