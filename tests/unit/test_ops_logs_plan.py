"""Log reading without hosts: timestamps, --since, merging, the remote scripts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from deploykit.errors import ConfigError
from deploykit.ops import logs

T0 = datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("line", "zone", "expected"), [
    ('198.18.0.1 - - [31/Jan/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 5', None, T0),
    ('127.0.0.1 - - [31/Jan/2026:13:00:00 +0100] "GET /health" 200', None, T0),
    ("[2026-01-31 12:00:00 +0000] [42] [INFO] Booting worker", None, T0),
    ("2026-01-31 12:00:00.250 UTC [77] LOG:  checkpoint starting", None, T0 + 0.25),
    ("2026/01/31 13:00:00 [error] 12#12: *1 connect() failed", "+0100", T0),
    ("2026-01-31 12:00:00,500 INFO spawned: 'sampleapp-blue'", None, T0 + 0.5),
    ("4242:M 31 Jan 2026 12:00:00.000 * Ready to accept connections", None, T0),
    ("2026-01-31T12:00:00Z something happened", None, T0),
    ("    at a traceback line without a time", None, None),
])
def test_timestamps_of_the_usual_log_formats(line: str, zone: str | None,
                                            expected: float | None) -> None:
    assert logs.parse_time(line, zone) == expected


def test_since_takes_durations_and_times() -> None:
    assert logs.parse_since("10m") == 600
    assert logs.parse_since("2h") == 7200
    assert logs.parse_since("1.5s") == 1.5
    assert logs.parse_since("2026-01-31T11:00:00Z", now=T0) == 3600
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        logs.parse_since("yesterday")


def test_lines_merge_by_time_and_continuations_stay_with_their_line() -> None:
    web1 = ("@@dk-now 1769860800 +0000\n@@dk-file /var/log/nginx/access.log\n"
            "a [31/Jan/2026:12:00:01 +0000] first on web-1\n"
            "a [31/Jan/2026:12:00:03 +0000] third on web-1\n"
            "  continuation of the third\n")
    web2 = ("@@dk-now 1769860800 +0000\n@@dk-file /var/log/nginx/error.log\n"
            "2026/01/31 12:00:02 [error] second on web-2\n")
    merged = logs.merge([logs.parse_read("web-1", web1), logs.parse_read("web-2", web2)])
    assert [(x.host, x.source, x.text.split(" on ")[0][-6:]) for x in merged] == [
        ("web-1", "access", " first"), ("web-2", "error", "second"),
        ("web-1", "access", " third"), ("web-1", "access", " third")]
    assert [x.text for x in logs.merge([logs.parse_read("web-1", web1)], limit=1)] == [
        "  continuation of the third"]


def test_since_keeps_only_recent_lines_by_the_hosts_clock() -> None:
    out = ("@@dk-now 1769860810 +0000\n@@dk-file /x.log\n"
           "2026-01-31T12:00:00Z old\n  old continuation\n2026-01-31T12:00:08Z new\n")
    assert [x.text for x in logs.parse_read("h", out, since=5)] == ["2026-01-31T12:00:08Z new"]


def test_log_files_are_checked_before_reaching_a_shell() -> None:
    assert logs.log_files("app", "shop") == ["/var/log/supervisor/shop-*.log"]
    assert logs.log_files("nginx", "shop", {"log_files": {"nginx": "/srv/log/*.log"}}) == [
        "/srv/log/*.log"]
    for bad in ("/var/log/$(reboot)", "relative.log", "/var/log/a b", "/var/../etc/shadow"):
        with pytest.raises(ConfigError, match="log file pattern"):
            logs.log_files("nginx", "shop", {"log_files": {"nginx": [bad]}})
    with pytest.raises(ConfigError, match="unknown service 'mysql'"):
        logs.LogQuery("shop", "mysql")


def test_the_grep_pattern_is_quoted_in_both_scripts() -> None:
    query = logs.LogQuery("shop", "nginx", grep="it's; rm -rf /")
    script = logs.read_script(["/var/log/nginx/access.log"], query)
    assert "grep -a -E -e 'it'\"'\"'s; rm -rf /'" in script
    follow = logs.follow_script(["/var/log/nginx/access.log"], query.grep)
    assert "-e 'it'\"'\"'s; rm -rf /'" in follow
    assert 'kill -TERM -- "-$pg"' in follow and "tail -n 0 -v -F" in follow
