"""Console reporters and the end-of-run recap."""

from __future__ import annotations

import io
import re
import threading

import pytest
from rich.console import Console

from deploykit.report import (
    NullReporter,
    PlainReporter,
    Reporter,
    RichReporter,
    format_recap_plain,
    make_reporter,
    recap_table,
    summary_line,
    undo_lines,
)
from deploykit.result import Result, RunReport, Status
from deploykit.secrets import Secret

HOSTS = ["web-1", "web-22", "db-1"]
STEPS = ["files.directory /srv/app", "nginx.config", "services.restart app"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def sample_report(check: bool = False) -> RunReport:
    report = RunReport("r1", started=0.0, check=check)
    for step in STEPS:
        report.add(Result("web-1", step, Status.OK))
    report.add(Result("web-22", STEPS[0], Status.CHANGED))
    report.add(Result("web-22", STEPS[1], Status.FAILED, message="nginx -t failed"))
    report.host("web-22").undone.append("restore /etc/nginx/nginx.conf")
    report.host("web-22").undo_failed.append("switch /srv/app/current back: permission denied")
    report.mark_unreachable("db-1", "connection refused")
    return report


# -- protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reporter",
    [NullReporter(), PlainReporter(io.StringIO()), RichReporter(Console(file=io.StringIO()))],
    ids=["null", "plain", "rich"],
)
def test_reporters_implement_the_protocol(reporter: Reporter) -> None:
    assert isinstance(reporter, Reporter)


def test_null_reporter_accepts_every_call() -> None:
    reporter = NullReporter()
    reporter.run_started(HOSTS, STEPS, check=False)
    reporter.step_started("web-1", STEPS[0])
    reporter.step_finished(Result("web-1", STEPS[0], Status.OK))
    reporter.host_failed("db-1", "refused")
    reporter.run_finished(sample_report())


# -- PlainReporter --------------------------------------------------------------------------


def test_plain_reporter_lines() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.run_started(HOSTS, STEPS, check=False)
    reporter.step_started("web-1", STEPS[0])
    assert out.getvalue() == "run: 3 hosts, 3 steps\n"
    reporter.step_finished(Result("web-1", STEPS[0], Status.CHANGED, duration=0.031, diff="x"))
    reporter.step_finished(Result("web-22", STEPS[0], Status.OK, duration=1.5))
    reporter.step_finished(
        Result(
            "web-22", STEPS[1], Status.FAILED, message="nginx -t failed\nline 3: bad", duration=2
        )
    )
    reporter.step_finished(Result("web-1", STEPS[2], Status.SKIPPED, message="when: false"))
    reporter.step_finished(Result("web-1", STEPS[1], Status.OK, message="info not shown"))
    reporter.host_failed("db-1", "connect to 198.18.0.13:22: connection refused")
    assert out.getvalue().splitlines() == [
        "run: 3 hosts, 3 steps",
        "web-1  | changed | files.directory /srv/app (0.03s)",
        "web-22 | ok      | files.directory /srv/app (1.50s)",
        "web-22 | failed  | nginx.config (2.00s)",
        "    nginx -t failed",
        "    line 3: bad",
        "web-1  | skipped | services.restart app (0.00s)",
        "    when: false",
        "web-1  | ok      | nginx.config (0.00s)",
        "db-1   | unreachable | connect to 198.18.0.13:22: connection refused",
    ]


def test_plain_reporter_shows_diffs_in_check_mode_by_default() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.run_started(["web-1"], STEPS, check=True)
    diff = "--- nginx.conf\n+++ nginx.conf\n-worker_processes 1;\n+worker_processes 2;\n"
    reporter.step_finished(Result("web-1", "nginx.config", Status.CHANGED, diff=diff, check=True))
    assert out.getvalue() == (
        "run: 1 host, 3 steps (check mode: no changes)\n"
        "web-1 | changed | nginx.config (0.00s)\n"
        "    --- nginx.conf\n"
        "    +++ nginx.conf\n"
        "    -worker_processes 1;\n"
        "    +worker_processes 2;\n"
    )


@pytest.mark.parametrize(
    ("show_diff", "check", "shown"),
    [(None, False, False), (None, True, True), (True, False, True), (False, True, False)],
)
def test_plain_reporter_show_diff(show_diff: bool | None, check: bool, shown: bool) -> None:
    out = io.StringIO()
    reporter = PlainReporter(out, show_diff=show_diff)
    reporter.run_started(["h"], ["s"], check=check)
    reporter.step_finished(Result("h", "s", Status.CHANGED, diff="mode: 0644 -> 0600"))
    assert ("    mode: 0644 -> 0600\n" in out.getvalue()) is shown


def test_plain_reporter_redacts_secrets() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out, secrets=[Secret("hunter2")])
    reporter.run_started(["db-1"], ["postgres.user app"], check=False)
    reporter.step_finished(
        Result("db-1", "postgres.user app", Status.FAILED, message="auth failed: hunter2")
    )
    reporter.host_failed("db-1", "sudo password hunter2 refused")
    assert "hunter2" not in out.getvalue()
    assert "    auth failed: ********\n" in out.getvalue()
    assert "db-1 | unreachable | sudo password ******** refused\n" in out.getvalue()


def test_plain_reporter_lines_stay_whole_across_threads() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.run_started([f"h{i}" for i in range(8)], ["s"], check=False)

    def work(i: int) -> None:
        for _ in range(100):
            reporter.step_finished(Result(f"h{i}", "s", Status.FAILED, message="boom"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = out.getvalue().splitlines()[1:]
    assert len(lines) == 1600
    # Each result's message line directly follows its own step line.
    for first, second in zip(lines[::2], lines[1::2], strict=True):
        assert re.fullmatch(r"h\d \| failed  \| s \(0\.00s\)", first)
        assert second == "    boom"


def test_plain_reporter_prints_recap_on_run_finished() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    report = sample_report()
    reporter.run_finished(report)
    assert out.getvalue() == "\n" + format_recap_plain(report) + "\n"


def test_plain_reporter_defaults_to_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    PlainReporter().run_started(["h"], ["s"], check=False)
    assert capsys.readouterr().out == "run: 1 host, 1 step\n"


# -- recap ----------------------------------------------------------------------------------


def test_format_recap_plain() -> None:
    assert format_recap_plain(sample_report()) == "\n".join(
        [
            "RECAP",
            "web-1  : ok=3  changed=0  failed=0  skipped=0  unreachable=0",
            "web-22 : ok=0  changed=1  failed=1  skipped=0  unreachable=0",
            "db-1   : ok=0  changed=0  failed=0  skipped=0  unreachable=1",
            "3 hosts: 1 ok, 0 changed, 2 failed",
            "web-22:",
            "  undone: restore /etc/nginx/nginx.conf",
            "  NOT undone: switch /srv/app/current back: permission denied",
        ]
    )


def test_format_recap_plain_aligns_wide_counts_and_omits_empty_undo() -> None:
    report = RunReport("r", check=True)
    for i in range(12):
        report.add(Result("a", f"s{i}", Status.CHANGED))
    report.add(Result("bb", "s0", Status.OK))
    assert format_recap_plain(report).splitlines() == [
        "RECAP (check mode: no changes)",
        "a  : ok=0  changed=12  failed=0  skipped=0  unreachable=0",
        "bb : ok=1  changed=0   failed=0  skipped=0  unreachable=0",
        "2 hosts: 1 ok, 1 changed, 0 failed",
    ]


def test_summary_line_counts_hosts_by_outcome() -> None:
    report = RunReport("r")
    report.add(Result("only", "s", Status.SKIPPED))
    assert summary_line(report) == "1 host: 1 ok, 0 changed, 0 failed"
    assert summary_line(sample_report()) == "3 hosts: 1 ok, 0 changed, 2 failed"


def test_undo_lines_are_redacted() -> None:
    report = RunReport("r", secrets=[Secret("hunter2")])
    report.host("db-1").undo_failed.append("ALTER ROLE app PASSWORD 'hunter2': timeout")
    assert undo_lines(report) == [
        "db-1:",
        "  NOT undone: ALTER ROLE app PASSWORD '********': timeout",
    ]


def test_recap_table() -> None:
    table = recap_table(sample_report())
    assert [c.header for c in table.columns] == [
        "host",
        "ok",
        "changed",
        "failed",
        "skipped",
        "unreachable",
    ]
    assert table.row_count == 3
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    rows = [re.split(r"\s*│\s*", line.strip("│ ")) for line in text.splitlines() if "│" in line]
    assert rows == [
        ["web-1", "3", "0", "0", "0", "0"],
        ["web-22", "0", "1", "1", "0", "0"],
        ["db-1", "0", "0", "0", "0", "1"],
    ]
    assert "3 hosts: 1 ok, 0 changed, 2 failed" in text
    assert "  undone: restore /etc/nginx/nginx.conf" in text
    assert "  NOT undone: switch /srv/app/current back: permission denied" in text


# -- make_reporter --------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_reporter_is_plain_for_a_pipe() -> None:
    stream = io.StringIO()
    reporter = make_reporter(stream)
    assert isinstance(reporter, PlainReporter)
    assert reporter.stream is stream


def test_make_reporter_is_rich_for_a_terminal() -> None:
    stream = FakeTTY()
    reporter = make_reporter(stream)
    assert isinstance(reporter, RichReporter)
    assert reporter.console.file is stream


def test_make_reporter_force_plain_and_closed_stream() -> None:
    assert isinstance(make_reporter(FakeTTY(), force_plain=True), PlainReporter)
    closed = io.StringIO()
    closed.close()
    assert isinstance(make_reporter(closed), PlainReporter)


def test_make_reporter_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = make_reporter()
    assert isinstance(reporter, PlainReporter)
    reporter.host_failed("db-1", "refused")
    assert capsys.readouterr().out == "db-1 | unreachable | refused\n"


# -- RichReporter ---------------------------------------------------------------------------


def rich_reporter(**kwargs: object) -> tuple[RichReporter, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=30)
    return RichReporter(console, refresh_per_second=50, **kwargs), out  # type: ignore[arg-type]


def render(reporter: RichReporter) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(reporter._render())
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_rich_reporter_full_run() -> None:
    reporter, out = rich_reporter(secrets=[Secret("hunter2")])
    report = sample_report(check=True)
    reporter.run_started(HOSTS, STEPS, check=True)
    for step in STEPS:
        reporter.step_started("web-1", step)
        reporter.step_finished(Result("web-1", step, Status.OK))
    reporter.step_started("web-22", STEPS[0])
    reporter.step_finished(
        Result("web-22", STEPS[0], Status.CHANGED, diff="-a\n+b", check=True, duration=0.5)
    )
    reporter.step_started("web-22", STEPS[1])
    reporter.step_finished(Result("web-22", STEPS[1], Status.FAILED, message="nginx -t: hunter2"))
    reporter.host_failed("db-1", "connection refused")
    reporter.run_finished(report)

    text = plain(out.getvalue())
    assert reporter._live is None
    assert "run: 3 hosts, 3 steps (check mode: no changes)" in text
    assert "web-22 | changed | files.directory /srv/app (0.50s)\n    -a\n    +b\n" in text
    assert "web-22 | failed | nginx.config (0.00s)\n    nginx -t: ********\n" in text
    assert "db-1 | unreachable | connection refused" in text
    assert "web-1 | ok" not in text  # ok steps are not printed above the live area
    assert "hunter2" not in text
    recap = text[text.index("Recap (check mode: no changes)") :]
    for host in HOSTS:
        assert host in recap
    assert "3 hosts: 1 ok, 0 changed, 2 failed" in recap
    assert "NOT undone: switch /srv/app/current back: permission denied" in recap


def test_rich_reporter_live_area_shows_running_hosts_and_progress() -> None:
    reporter, _ = rich_reporter()
    reporter.run_started(HOSTS, STEPS, check=False)
    try:
        assert "0/9 steps 0 done, 0 running, 3 waiting" in render(reporter)
        reporter.step_started("web-1", STEPS[0])
        reporter.step_finished(Result("web-1", STEPS[0], Status.OK))
        reporter.step_started("web-1", STEPS[1])
        reporter.step_started("web-22", STEPS[0])
        reporter.host_failed("db-1", "refused")
        live = render(reporter)
        # db-1 failed: its 3 steps count as done; web-1 has done 1.
        assert "4/9 steps 1 done, 2 running, 0 waiting" in live
        assert re.search(r"web-1\s+nginx\.config", live)
        assert re.search(r"web-22\s+files\.directory /srv/app", live)
        assert "db-1" not in live
    finally:
        reporter.run_finished(sample_report())


def test_rich_reporter_caps_the_number_of_rows() -> None:
    reporter, _ = rich_reporter(max_rows=2)
    hosts = [f"app-{i}" for i in range(5)]
    reporter.run_started(hosts, ["s"], check=False)
    try:
        for host in hosts:
            reporter.step_started(host, "s")
        live = render(reporter)
        assert "app-1" in live and "app-2" not in live
        assert "... and 3 more running" in live
    finally:
        reporter.run_finished(RunReport("r"))


def test_rich_reporter_from_threads() -> None:
    reporter, out = rich_reporter()
    hosts = [f"app-{i}" for i in range(6)]
    steps = [f"step {i}" for i in range(20)]
    report = RunReport("r")
    reporter.run_started(hosts, steps, check=False)

    def work(host: str) -> None:
        for step in steps:
            reporter.step_started(host, step)
            result = Result(host, step, Status.CHANGED)
            report.add(result)
            reporter.step_finished(result)

    threads = [threading.Thread(target=work, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "120/120 steps 6 done, 0 running, 0 waiting" in render(reporter)
    reporter.run_finished(report)
    text = plain(out.getvalue())
    assert text.count("| changed |") == 120
    assert "6 hosts: 0 ok, 6 changed, 0 failed" in text


def test_rich_reporter_run_finished_without_run_started() -> None:
    reporter, out = rich_reporter()
    reporter.run_finished(sample_report())
    assert "3 hosts: 1 ok, 0 changed, 2 failed" in plain(out.getvalue())
