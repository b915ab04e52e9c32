"""HTTP checks against real HTTP servers on 127.0.0.1 (started per test module).

One threaded server answers every path the tests need: healthy and unhealthy
JSON, a 503, slow answers, a flaky endpoint, a version. It counts the requests
it saw and the most it served at once, so tests can assert retries and the
concurrency bound. Nothing here leaves the loopback interface.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.result import Status
from deploykit.tasks import http

DATASETTE_VERSIONS = {
    "python": {"version": "3.11.2", "full": "3.11.2 (main) [GCC 12.2.0]"},
    "datasette": {"version": "0.65.5"},
    "asgi": "3.0", "uvicorn": "0.55.0",
    "sqlite": {"version": "3.40.1", "fts_versions": ["FTS5", "FTS4", "FTS3"],
               "extensions": {"json1": None}, "compile_options": ["ENABLE_FTS5"]},
}


class Backend(ThreadingHTTPServer):
    """The test server: request counters and in-flight tracking."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.hosts: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.in_flight = self.max_in_flight = 0
            self.hosts.clear()


HEALTHY = {"status": "ok", "checks": {"db": "ok", "cache": "ok"}}


class Handler(BaseHTTPRequestHandler):
    server: Backend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes | str | dict[str, Any]) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body)
        raw = data.encode() if isinstance(data, str) else data
        self.leave()  # before any byte goes out: the client may send its next request at once
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        srv = self.server
        with srv.lock:
            count = srv.counts[url.path] = srv.counts.get(url.path, 0) + 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv.hosts.append(self.headers.get("Host", ""))
        self.counted = True
        try:
            self.answer(url.path, query, count)
        finally:
            self.leave()

    def leave(self) -> None:
        """This request no longer counts as in flight (once, whichever path gets here first)."""
        if getattr(self, "counted", False):
            self.counted = False
            with self.server.lock:
                self.server.in_flight -= 1

    def answer(self, path: str, query: dict[str, list[str]], count: int) -> None:
        if path == "/health":
            self.send(200, HEALTHY)
        elif path == "/down":
            self.send(503, {"status": "down", "checks": {"db": "down"}})
        elif path == "/dbdown":
            self.send(200, {"status": "ok", "checks": {"db": "down"}})
        elif path == "/text":
            self.send(200, "<html>hello world</html>")
        elif path == "/slow":
            time.sleep(int(query["ms"][0]) / 1000)
            self.send(200, "slow")
        elif path == "/flaky":  # 503 twice, then healthy
            self.send(503 if count <= 2 else 200, "starting" if count <= 2 else "ready")
        elif path == "/every4":  # every 4th request fails
            self.send(500 if count % 4 == 0 else 200, "x")
        elif path == "/version":
            self.send(200, {"version": "1.4.2", "build": {"version": "1.4.2+b7"}})
        elif path == "/version.txt":
            self.send(200, "1.4.2\n")
        elif path == "/-/versions.json":  # what datasette answers, recorded from 0.65.5
            self.send(200, DATASETTE_VERSIONS)
        elif path == "/admin/login/":  # a Django page: HTML, no JSON, no version
            self.send(200, "<!DOCTYPE html><html><title>Log in | Django site admin</title>"
                           "</html>")
        elif path == "/big":
            self.send(200, b"a" * (http.MAX_BODY + 10))
        else:
            self.send(404, "not found")


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def srv(backend: Backend) -> Backend:
    backend.reset()
    return backend


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- request and wait_for ---------------------------------------------------------------


def test_request_reports_status_body_and_elapsed(srv: Backend) -> None:
    response = http.request(f"{srv.base}/health", headers={"Host": "shop.test"})
    assert (response.status, response.reason, response.json()) == (200, "OK", HEALTHY)
    assert 0 < response.elapsed < 5 and response.error is None
    assert srv.hosts == ["shop.test"]
    assert response.describe().startswith("HTTP 200 OK after ")
    assert response.describe().endswith(f"body: {json.dumps(HEALTHY)!r}")


def test_request_reads_a_bounded_body(srv: Backend) -> None:
    response = http.request(f"{srv.base}/big")
    assert len(response.body) == http.MAX_BODY
    assert response.excerpt(10) == "'aaaaaaaaaa'..."


def test_wait_for_returns_the_matching_response(srv: Backend) -> None:
    response = http.wait_for(f"{srv.base}/health",
                             json_expect={"status": "ok", "checks.db": "ok"})
    assert response.status == 200 and srv.counts == {"/health": 1}


def test_wait_for_retries_until_ready(srv: Backend) -> None:
    response = http.wait_for(f"{srv.base}/flaky", contains="ready", retries=5, interval=0.01)
    assert response.text == "ready"
    assert srv.counts == {"/flaky": 3}


def test_wait_for_reports_a_refused_connection(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/health"
    with pytest.raises(http.HttpCheckError) as caught:
        http.wait_for(url, retries=2, interval=0.01)
    err = caught.value
    assert err.message.startswith(f"GET {url}: not ready after 3 attempts in ")
    assert err.message.endswith(f": connection refused by 127.0.0.1:{closed_port}")
    assert err.attempts == 3 and err.response is not None and err.response.status is None


def test_wait_for_reports_the_last_503(srv: Backend) -> None:
    with pytest.raises(http.HttpCheckError) as caught:
        http.wait_for(f"{srv.base}/down", retries=1, interval=0.01)
    message = caught.value.message
    assert ": status 503, expected 200; last response: HTTP 503 Service Unavailable after " \
        in message
    assert message.endswith("""body: '{"status": "down", "checks": {"db": "down"}}'""")
    assert srv.counts == {"/down": 2}


@pytest.mark.parametrize(("path", "expect", "reason"), [
    ("/dbdown", {"status": "ok", "checks.db": "ok"}, "JSON checks.db: expected 'ok', got 'down'"),
    ("/health", {"checks.queue": "ok"}, "JSON checks.queue: missing (no 'queue')"),
    ("/health", {"checks.db.status": "ok"}, "JSON checks.db.status: missing (no 'status')"),
    ("/text", {"status": "ok"}, "body is not JSON: '<html>hello world</html>'"),
])
def test_wait_for_names_the_json_mismatch(srv: Backend, path: str, expect: dict[str, str],
                                          reason: str) -> None:
    with pytest.raises(http.HttpCheckError) as caught:
        http.wait_for(f"{srv.base}{path}", json_expect=expect, retries=0)
    assert "not ready after 1 attempt in " in caught.value.message
    assert f": {reason}; last response: HTTP 200 OK" in caught.value.message


def test_wait_for_accepts_several_statuses_and_checks_text(srv: Backend) -> None:
    assert http.wait_for(f"{srv.base}/down", status=(200, 503), retries=0).status == 503
    with pytest.raises(http.HttpCheckError, match="body does not contain 'goodbye'"):
        http.wait_for(f"{srv.base}/text", contains="goodbye", retries=0)


def test_wait_for_times_out_each_attempt(srv: Backend) -> None:
    started = time.monotonic()
    with pytest.raises(http.HttpCheckError) as caught:
        http.wait_for(f"{srv.base}/slow?ms=2000", timeout=0.2, retries=1, interval=0)
    assert time.monotonic() - started < 1.5  # two attempts of 0.2 s, not two of 2 s
    assert caught.value.message.endswith(
        f"no response from 127.0.0.1:{srv.server_address[1]} within 0.2 s")


@pytest.mark.parametrize(("call", "message"), [
    (lambda: http.wait_for("ftp://host/x"), "invalid URL 'ftp://host/x'"),
    (lambda: http.wait_for("http:///x"), "invalid URL"),
    (lambda: http.wait_for("http://h/", retries=-1), "retries must be"),
    (lambda: http.wait_for("http://h/", status=700), "status must be"),
    (lambda: http.wait_for("http://h/", json_expect={"a..b": 1}), "invalid path 'a..b'"),
    (lambda: http.request("http://h/", timeout=0), "timeout must be positive"),
    (lambda: http.measure("http://h/", n=0), "n must be"),
    (lambda: http.measure("http://h/", concurrency=65), "concurrency must be"),
    (lambda: http.measure("http://h/", max_duration=0), "max_duration"),
    (lambda: http.measure_task("http://h/", max_p95=-1), "max_p95 must be >= 0"),
    (lambda: http.wait_for_task("https://h/", via_ssh=True), "via_ssh works with http://"),
    (lambda: http.wait_for_task("http://{address}:x/"), "invalid URL"),
])
def test_bad_arguments_raise_config_errors(call: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        call()


def test_json_path() -> None:
    data = {"a": {"b": [{"c": 1}]}}
    assert http.json_path(data, "a.b.0.c") == 1
    with pytest.raises(KeyError):
        http.json_path(data, "a.b.1")


# -- expect_version -----------------------------------------------------------------------


def test_expect_version_reads_json_or_text(srv: Backend) -> None:
    assert http.expect_version(f"{srv.base}/version", "1.4.2").status == 200
    assert http.expect_version(f"{srv.base}/version", "1.4.2+b7", field="build.version")
    assert http.expect_version(f"{srv.base}/version.txt", "1.4.2").text == "1.4.2\n"
    with pytest.raises(http.HttpCheckError, match=r"wrong version after 1 attempt in .*: "
                                                  r"version is '1\.4\.2', expected '2\.0\.0'"):
        http.expect_version(f"{srv.base}/version", "2.0.0")
    with pytest.raises(http.HttpCheckError, match="status 404, expected 200"):
        http.expect_version(f"{srv.base}/nowhere", "1.4.2")


# -- measure ------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [http.percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert http.percentile([0.3], 99) == 0.3
    assert http.percentile([], 50) is None


def test_measure_against_a_slow_server(srv: Backend) -> None:
    m = http.measure(f"{srv.base}/slow?ms=50", n=20, concurrency=4)
    assert (m.requests, m.errors, m.error_rate, m.statuses, m.complete) == (
        20, 0, 0.0, {"200": 20}, True)
    assert m.p50 is not None and m.p95 is not None and m.p99 is not None
    assert m.max is not None and m.mean is not None
    assert 0.05 <= m.p50 <= m.p95 <= m.p99 <= m.max < 2.0
    assert 0.05 <= m.mean <= m.max
    assert srv.counts == {"/slow": 20}
    assert 1 < srv.max_in_flight <= 4  # really concurrent, and never more than asked
    assert m.summary().startswith("20 requests, 0 errors (0.0%), p50 ")


def test_measure_counts_errors_by_status(srv: Backend) -> None:
    m = http.measure(f"{srv.base}/every4", n=40, concurrency=4)
    assert (m.requests, m.errors, m.statuses) == (40, 10, {"200": 30, "500": 10})
    assert m.error_rate == 0.25
    assert m.first_error is not None and m.first_error.startswith("HTTP 500 ")
    relaxed = http.measure(f"{srv.base}/every4", n=8, concurrency=2, ok_status={200, 500})
    assert relaxed.errors == 0 and relaxed.first_error is None


def test_measure_without_any_response(closed_port: int) -> None:
    m = http.measure(f"http://127.0.0.1:{closed_port}/", n=5, concurrency=2)
    assert (m.requests, m.errors, m.error_rate, m.statuses) == (5, 5, 1.0, {"error": 5})
    assert (m.p50, m.p95, m.p99, m.max, m.mean) == (None, None, None, None, None)
    assert m.first_error is not None and m.first_error.startswith("connection refused")


def test_measure_stops_at_max_duration(srv: Backend) -> None:
    m = http.measure(f"{srv.base}/slow?ms=100", n=1000, concurrency=2, max_duration=0.3)
    assert not m.complete and m.requested == 1000
    assert 2 <= m.requests <= 10 and m.errors == 0
    assert srv.counts["/slow"] == m.requests
    assert m.summary().endswith(f"(stopped by max_duration: {m.requests} of 1000 sent)")


# -- as tasks (no SSH: a Connection that is never opened) ----------------------------------


@pytest.fixture
def conn() -> Connection:
    """A Connection to a host at 127.0.0.1: the checks must never open it."""
    return Connection(Host(name="local", address="127.0.0.1"))


def test_wait_for_task_fills_the_address_and_sends_nothing_over_ssh(srv: Backend,
                                                                    conn: Connection) -> None:
    port = srv.server_address[1]
    task = http.wait_for_task(f"http://{{address}}:{port}/health?host={{name}}",
                              json_expect={"checks.db": "ok"})
    result = task.run(conn)
    assert result.status is Status.OK, result.message
    assert result.data["url"] == f"http://127.0.0.1:{port}/health?host=local"
    assert result.data["response"]["status"] == 200
    assert result.message.startswith("HTTP 200 OK after ")
    assert conn.log == [] and not conn.is_open
    assert task.probe(conn) == {} and not task.plan(conn, {})


def test_wait_for_task_failure_is_a_failed_result(closed_port: int, conn: Connection) -> None:
    result = http.wait_for_task(f"http://{{address}}:{closed_port}/", retries=1,
                                interval=0.01).run(conn)
    assert result.status is Status.FAILED
    assert result.message.endswith(f"connection refused by 127.0.0.1:{closed_port}")
    assert result.data["attempts"] == 2 and result.data["response"]["status"] is None


def test_expect_version_task(srv: Backend, conn: Connection) -> None:
    port = srv.server_address[1]
    ok = http.expect_version_task(f"http://{{address}}:{port}/version", "1.4.2").run(conn)
    assert ok.status is Status.OK and ok.task == (
        f"http.expect_version http://{{address}}:{port}/version 1.4.2")
    bad = http.expect_version_task(f"http://{{address}}:{port}/version", "9").run(conn)
    assert bad.status is Status.FAILED and "version is '1.4.2', expected '9'" in bad.message


def test_measure_task_gates_on_limits(srv: Backend, conn: Connection) -> None:
    url = f"http://{{address}}:{srv.server_address[1]}/every4"
    ok = http.measure_task(url, n=8, concurrency=2, max_error_rate=0.3).run(conn)
    assert ok.status is Status.OK
    assert (ok.data["requests"], ok.data["errors"], ok.data["error_rate"]) == (8, 2, 0.25)
    assert ok.data["p95"] is not None and ok.message.startswith("8 requests, 2 errors (25.0%)")
    bad = http.measure_task(url, n=8, concurrency=2, max_error_rate=0.1, max_p95=10).run(conn)
    assert bad.status is Status.FAILED
    assert bad.message.startswith(f"GET {url.replace('{address}', '127.0.0.1')}: "
                                  "error_rate 0.250 > 0.1: 8 requests, 2 errors")
    assert "first error: HTTP 500 " in bad.message and bad.data["errors"] == 2


def test_checks_run_in_check_mode_unless_told_not_to(srv: Backend, conn: Connection) -> None:
    url = f"http://{{address}}:{srv.server_address[1]}/health"
    assert http.wait_for_task(url).run(conn, check=True).status is Status.OK
    skipped = http.wait_for_task(url, in_check_mode=False).run(conn, check=True)
    assert (skipped.status, skipped.message) == (Status.SKIPPED, "not run in check mode")
    assert srv.counts == {"/health": 1}


# -- the app contract's health and version checks ---------------------------------------------


def test_health_check_with_a_body_pattern_or_a_json_field(srv: Backend, conn: Connection) -> None:
    from deploykit.tasks.health import HttpCheck

    base = f"http://{{address}}:{srv.server_address[1]}"
    datasette = HttpCheck(path="/-/versions.json", json_field="datasette.version")
    ok = datasette.task(base).run(conn)
    assert ok.status is Status.OK, ok.message
    assert ok.data["url"].endswith("/-/versions.json")
    pinned = HttpCheck(path="/-/versions.json", json_field="sqlite.fts_versions.0",
                       json_value="FTS5")
    assert pinned.task(base).run(conn).status is Status.OK
    django = HttpCheck(path="/admin/login/", body_pattern=r"<title>Log in \|")
    assert django.task(base).run(conn).status is Status.OK
    missing = HttpCheck(path="/-/versions.json", json_field="datasette.nope", retries=0)
    failed = missing.task(base).run(conn)
    assert failed.status is Status.FAILED and "JSON datasette.nope: missing" in failed.message
    nomatch = HttpCheck(path="/admin/login/", body_pattern="Welcome", retries=0)
    failed = nomatch.task(base).run(conn)
    assert failed.status is Status.FAILED and "body does not match 'Welcome'" in failed.message
    statuses = HttpCheck(path="/down", status=(200, 503), retries=0)
    assert statuses.task(base).run(conn).status is Status.OK


def test_version_check_reads_a_json_field_a_pattern_or_the_body(srv: Backend,
                                                                  conn: Connection) -> None:
    from deploykit.tasks.health import VersionCheck

    base = f"http://{{address}}:{srv.server_address[1]}"
    assert VersionCheck(path="/version", json_field="build.version").task(
        base, version="1.4.2+b7").run(conn).status is Status.OK
    assert VersionCheck(path="/version.txt").task(base, version="1.4.2").run(conn).status \
        is Status.OK
    pattern = VersionCheck(path="/-/versions.json", body_pattern=r'"datasette": {"version": '
                           r'"{version}"')
    assert pattern.task(base, version="0.65.5").run(conn).status is Status.OK
    wrong = pattern.task(base, version="0.64").run(conn)
    assert wrong.status is Status.FAILED and "0.64" in wrong.message
    bad = VersionCheck(path="/version", json_field="version", retries=0).task(
        base, version="9.9").run(conn)
    assert bad.status is Status.FAILED and "version is '1.4.2', expected '9.9'" in bad.message


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "health"}, "health.path: must start with '/'"),
    ({"path": "/a b"}, "health.path: must not contain spaces"),
    ({"status": ()}, "health.status: "),
    ({"status": (200, 99)}, "health.status: "),
    ({"body_pattern": "("}, "health.body_pattern: not a regular expression"),
    ({"json_value": "ok"}, "health.json_value: needs json_field"),
    ({"json_field": "a..b"}, "health.json_field: invalid path 'a..b'"),
    ({"retries": -1}, "health.retries: "),
])
def test_check_specs_are_validated_naming_the_key(kwargs: dict[str, Any], message: str) -> None:
    from deploykit.tasks.health import HttpCheck

    with pytest.raises(ConfigError, match=re.escape(message)):
        HttpCheck(**kwargs)
