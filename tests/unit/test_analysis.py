"""Canary analysis without hosts: log lines, figures, verdicts, and the window read.

The read script runs in a real local ``sh`` against a real file (offsets, limits,
rotation); the rendered nginx configuration goes through the real ``nginx -t``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploykit.errors import ConfigError, TaskError
from deploykit.strategies.analysis import (
    AccessLog,
    Attempt,
    Cursor,
    LogRecord,
    SideStats,
    Thresholds,
    attempts_by_side,
    compare,
    judge,
    parse_chunk,
    parse_line,
    parse_lines,
    read_script,
    side_stats,
)

STABLE, CANARY = "127.0.0.1:8001", "127.0.0.1:8002"


def line(addr: str = STABLE, status: str = "200", rt: str = "0.004", ustatus: str | None = None,
         urt: str | None = None, uri: str = "/version", upstream: str = "shop_upstream") -> str:
    """A log line as nginx's escape=json format writes it."""
    return json.dumps({"time": "2026-11-25T18:30:02+00:00", "status": status,
                       "request_time": rt, "upstream_addr": addr,
                       "upstream_status": status if ustatus is None else ustatus,
                       "upstream_response_time": rt if urt is None else urt,
                       "method": "GET", "uri": uri, "upstream": upstream},
                      separators=(",", ":"))


def stats(requests: int, errors: int = 0, p95: float | None = 10.0) -> SideStats:
    return SideStats(requests, errors, p95, p95, p95, p95)


# -- lines ---------------------------------------------------------------------------------


def test_a_plain_line_is_one_attempt_timed_by_request_time() -> None:
    record = parse_line(line(CANARY, "503", rt="0.250", urt="0.249"))
    assert record == LogRecord(503, 250.0, (Attempt(CANARY, 503, 250.0),),
                               "2026-11-25T18:30:02+00:00", "GET", "/version", "shop_upstream")
    assert record.attempts[0].error


def test_a_retried_request_counts_each_attempt_with_its_own_status_and_time() -> None:
    record = parse_line(line(f"{CANARY}, {STABLE}", "200", rt="0.012", ustatus="502, 200",
                             urt="0.001, 0.010"))
    assert record is not None
    assert record.status == 200
    assert record.attempts == (Attempt(CANARY, 502, 1.0), Attempt(STABLE, 200, 10.0))
    assert [a.error for a in record.attempts] == [True, False]


def test_upstream_groups_and_missing_figures() -> None:
    record = parse_line(line(f"{CANARY} : {STABLE}", "504", rt="1.5", ustatus="504 : -",
                             urt="1.000 : -"))
    assert record is not None
    assert record.attempts == (Attempt(CANARY, 504, 1000.0), Attempt(STABLE, None, None))
    assert not record.attempts[1].error


def test_escaped_values_parse() -> None:
    text = line(uri='/a"b\\c').replace('/a\\"b', '/a\\"b')
    record = parse_line(text)
    assert record is not None and record.uri == '/a"b\\c'


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '{"status": "200"}', line(addr="-"), line(status="abc"),
    line(rt="-1"), line(rt="nan"), json.dumps({**json.loads(line()), "status": 200}),
])
def test_lines_that_are_not_records(text: str) -> None:
    assert parse_line(text) is None


def test_parse_lines_skips_blank_lines_and_counts_malformed_ones() -> None:
    data = "\n".join([line(), "", "garbage", line(CANARY), "   "]).encode()
    records, malformed = parse_lines(data)
    assert [r.attempts[0].address for r in records] == [STABLE, CANARY]
    assert malformed == 1


# -- figures -------------------------------------------------------------------------------


def test_side_stats_count_5xx_only_and_take_nearest_rank_percentiles() -> None:
    attempts = [Attempt(STABLE, 200, float(ms)) for ms in range(1, 97)]
    attempts += [Attempt(STABLE, 404, 97.0), Attempt(STABLE, 500, 98.0),
                 Attempt(STABLE, 502, 99.0), Attempt(STABLE, None, 100.0)]
    s = side_stats(attempts)
    assert (s.requests, s.errors) == (100, 2)
    assert s.error_rate == 0.02
    assert (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms) == (50.0, 95.0, 99.0, 100.0)
    assert s.statuses == {"-": 1, "200": 96, "404": 1, "500": 1, "502": 1}


def test_side_stats_of_nothing() -> None:
    s = side_stats([])
    assert (s.requests, s.errors, s.error_rate, s.p95_ms, s.max_ms) == (0, 0, 0.0, None, None)


def test_attempts_by_side_ignores_other_addresses_and_upstreams() -> None:
    records = [parse_line(line(a)) for a in (STABLE, CANARY, "10.0.0.9:80", CANARY)]
    records.append(parse_line(line(f"{CANARY}, {STABLE}", upstream="blog_upstream")))
    sides = {STABLE: "stable", CANARY: "canary"}
    found, other = attempts_by_side([r for r in records if r], sides)
    assert (len(found["stable"]), len(found["canary"]), other) == (2, 3, 1)
    found, other = attempts_by_side([r for r in records if r], sides, "shop_upstream")
    assert (len(found["stable"]), len(found["canary"]), other) == (1, 2, 3)


# -- verdicts ------------------------------------------------------------------------------


def test_too_few_canary_requests_is_inconclusive_not_a_pass() -> None:
    verdict = judge(stats(4), stats(500), Thresholds(min_requests=5))
    assert verdict.status == "inconclusive"
    assert not verdict.passed
    assert verdict.reasons == ("canary served 4 requests, fewer than min_requests=5: "
                               "not judged",)
    assert judge(stats(5), stats(500), Thresholds(min_requests=5)).status == "pass"


def test_a_healthy_canary_passes_every_check() -> None:
    verdict = judge(stats(100, 1, 30.0), stats(1000, 5, 25.0), Thresholds())
    assert verdict.status == "pass"
    assert [(c.name, c.passed, c.skipped) for c in verdict.checks] == [
        ("error_rate", True, False), ("p95_ms", True, False),
        ("error_rate_vs_stable", True, False), ("p95_vs_stable", True, False)]


def test_error_rate_is_at_most_the_limit() -> None:
    t = Thresholds(max_error_rate=0.01)
    assert judge(stats(100, 1), stats(100, 1), t).passed  # exactly 1 %
    verdict = judge(stats(100, 2), stats(100, 2), t)
    assert verdict.status == "fail"
    assert verdict.reasons == ("canary 5xx 2.00%, at most 1.00%",)


def test_p95_over_the_absolute_limit_fails() -> None:
    verdict = judge(stats(50, p95=1003.0), stats(900, p95=6.0), Thresholds())
    assert verdict.status == "fail"
    assert "canary p95 1003 ms, at most 500 ms" in verdict.reasons
    assert any(r.startswith("canary p95 1003 ms, stable 6 ms x 1.5 + 50 ms = 59 ms")
               for r in verdict.reasons)


def test_p95_margin_against_stable() -> None:
    t = Thresholds(max_p95_ms=1000, p95_margin=0.5, p95_slack_ms=50)
    assert judge(stats(50, p95=200.0), stats(500, p95=100.0), t).passed  # 100 x 1.5 + 50
    verdict = judge(stats(50, p95=201.0), stats(500, p95=100.0), t)
    assert verdict.status == "fail"
    assert verdict.reasons == ("canary p95 201 ms, stable 100 ms x 1.5 + 50 ms = 200 ms",)


def test_error_rate_margin_against_stable() -> None:
    t = Thresholds(max_error_rate=0.5, error_rate_margin=0.02)
    assert judge(stats(100, 3), stats(100, 1), t).passed  # 3 % <= 1 % + 2 points
    verdict = judge(stats(100, 4), stats(100, 1), t)
    assert verdict.status == "fail"
    assert verdict.reasons == ("canary 5xx 4.00%, stable 1.00% + margin 2.00% = 3.00%",)


def test_relative_checks_are_skipped_when_stable_served_too_little() -> None:
    verdict = judge(stats(100, p95=400.0), stats(3, p95=5.0), Thresholds(min_requests=20))
    assert verdict.status == "pass"
    skipped = [c for c in verdict.checks if c.skipped]
    assert [c.name for c in skipped] == ["error_rate_vs_stable", "p95_vs_stable"]
    assert all(c.detail == "stable served 3 requests, fewer than min_requests=20: not compared"
               for c in skipped)


def test_no_latency_figures_fail_the_latency_check() -> None:
    verdict = judge(stats(30, p95=None), stats(300), Thresholds())
    assert verdict.status == "fail"
    assert "canary: no latency figures" in verdict.reasons


@pytest.mark.parametrize("kwargs", [
    {"max_error_rate": 1.5}, {"max_error_rate": -0.1}, {"error_rate_margin": True},
    {"max_p95_ms": -1}, {"p95_margin": float("inf")}, {"min_requests": 0},
    {"min_requests": 2.5},
])
def test_bad_thresholds(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="thresholds: "):
        Thresholds(**kwargs)  # type: ignore[arg-type]


def test_compare_gives_fleet_and_host_figures() -> None:
    records = {
        "web-1": [parse_line(line(STABLE, rt="0.010")) for _ in range(30)]
        + [parse_line(line(CANARY, "500", rt="0.020"))],
        "web-2": [parse_line(line(STABLE, rt="0.012")) for _ in range(30)]
        + [parse_line(line(CANARY, rt="0.030")) for _ in range(9)]
        + [parse_line(line("10.9.9.9:80"))],
    }
    clean = {h: [r for r in rs if r] for h, rs in records.items()}
    c = compare(clean, {STABLE: "stable", CANARY: "canary"}, Thresholds(min_requests=10),
                upstream="shop_upstream")
    assert (c.canary.requests, c.canary.errors, c.stable.requests) == (10, 1, 60)
    assert c.hosts["web-1"]["canary"].requests == 1
    assert c.hosts["web-2"]["canary"].p95_ms == 30.0
    assert c.other_attempts == 1
    assert c.verdict.status == "fail"  # 10 % 5xx
    data = c.as_dict("web-2")
    assert list(data["hosts"]) == ["web-2"]
    assert data["canary"]["error_rate"] == 0.1
    assert data["verdict"]["status"] == "fail"
    with pytest.raises(ConfigError):
        compare(clean, {STABLE: "old"}, Thresholds())


# -- reading the log -----------------------------------------------------------------------


def run_read(path: Path, cursor: Cursor | None, limit: int) -> bytes:
    """The read script in a real local shell."""
    return subprocess.run(["sh", "-c", read_script(str(path), cursor, limit)],
                          capture_output=True, check=True).stdout


def test_read_returns_complete_lines_after_the_cursor(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(line(STABLE) + "\n")
    start = parse_chunk(run_read(log, None, 0), None)  # a window's start: the end
    inode = os.stat(log).st_ino
    assert start.cursor == Cursor(inode, log.stat().st_size) and start.records == []
    partial = line(CANARY)
    with log.open("a") as f:
        f.write(line(CANARY, "502") + "\n" + partial[:20])
    chunk = parse_chunk(run_read(log, start.cursor, 1 << 20), start.cursor)
    assert [(r.attempts[0].address, r.status) for r in chunk.records] == [(CANARY, 502)]
    assert chunk.cursor.offset == log.stat().st_size - 20  # the partial line waits
    with log.open("a") as f:
        f.write(partial[20:] + "\n")
    chunk = parse_chunk(run_read(log, chunk.cursor, 1 << 20), chunk.cursor)
    assert [r.attempts[0].address for r in chunk.records] == [CANARY]
    assert chunk.cursor.offset == log.stat().st_size
    assert not chunk.rotated and chunk.skipped_bytes == 0


def test_read_takes_the_newest_bytes_beyond_the_limit(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    lines = [line(STABLE, rt=f"0.{i:03d}") for i in range(1, 41)]
    log.write_text("\n".join(lines) + "\n")
    cursor = Cursor(os.stat(log).st_ino, 0)
    limit = len(lines[0]) * 5 + 10  # five lines and a bit
    chunk = parse_chunk(run_read(log, cursor, limit), cursor)
    assert [r.request_ms for r in chunk.records] == [36.0, 37.0, 38.0, 39.0, 40.0]
    assert chunk.skipped_bytes == log.stat().st_size - chunk.bytes
    assert chunk.cursor.offset == log.stat().st_size


def test_a_rotated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(line(STABLE) + "\n" + line(STABLE) + "\n")
    cursor = parse_chunk(run_read(log, None, 0), None).cursor
    log.rename(tmp_path / "access.log.1")
    log.write_text(line(CANARY) + "\n")
    chunk = parse_chunk(run_read(log, cursor, 1 << 20), cursor)
    assert chunk.rotated
    assert [r.attempts[0].address for r in chunk.records] == [CANARY]
    truncated = Cursor(chunk.cursor.inode, chunk.cursor.offset + 1000)
    again = parse_chunk(run_read(log, truncated, 1 << 20), truncated)
    assert again.rotated and len(again.records) == 1


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    chunk = parse_chunk(run_read(tmp_path / "none.log", None, 1 << 20), None)
    assert (chunk.records, chunk.cursor) == ([], Cursor(0, 0))


def test_unexpected_read_output_is_an_error() -> None:
    with pytest.raises(TaskError, match="unexpected output reading the access log"):
        parse_chunk(b"Permission denied\n", None)
    with pytest.raises(TaskError, match="unexpected output"):
        parse_chunk(b"@@dk-log 1 2\n", None)


def test_the_read_script_quotes_the_path(tmp_path: Path) -> None:
    script = read_script("/var/log/x'; rm -rf /tmp/y", Cursor(5, 10), 100)
    assert "f='/var/log/x'\"'\"'; rm -rf /tmp/y'" in script


# -- the nginx configuration ---------------------------------------------------------------


def test_access_log_render() -> None:
    text = AccessLog().render()
    assert "log_format deploykit_upstream escape=json '{\"time\":\"$time_iso8601\"," in text
    assert "\"upstream_addr\":\"$upstream_addr\"" in text
    assert "\"upstream\":\"$proxy_host\"}';" in text
    assert text.endswith("access_log /var/log/nginx/deploykit-upstream.log deploykit_upstream "
                         "if=$upstream_addr;\n")
    assert AccessLog().conf_file == "/etc/nginx/conf.d/deploykit-upstream-log.conf"


@pytest.mark.parametrize("kwargs", [
    {"path": "relative.log"}, {"path": "/var/log/a b.log"}, {"path": "/var/log/a;b"},
    {"path": "/var/log/'x'"}, {"path": "/var/../etc/passwd"}, {"format_name": "a-b"},
    {"format_name": "1x"}, {"max_read_bytes": 10},
])
def test_bad_access_log_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AccessLog(**kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    log = AccessLog(path=str(tmp_path / "upstream.log"))
    (tmp_path / "analysis.conf").write_text(log.render())
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/analysis.conf;\n}}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c",
                             str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
