"""Notifications against a real HTTP receiver on 127.0.0.1 (http.server in a thread).

The receiver records every request (method, path, headers, JSON body) and can
answer with any status or after a delay; a closed port stands for a receiver
that is down. A notification must never raise, never wait longer than its
timeout, and never show a Secret URL or header.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deploykit.errors import ConfigError
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.tasks import notify
from deploykit.tasks.notify import DeployEvent, Notifier

SLACK_PATH = "/services/T000/B000/XXXXsecretpathXXXX"


@dataclass
class Request:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording requests; answers ``status`` with ``reply``
    (JSON) after ``delay`` seconds. Use as a context manager; ``url(path)`` points at it."""

    status: int = 200
    reply: Any = None
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.requests.append(Request(self.command, self.path,
                                                 dict(self.headers.items()), body))
                if receiver.delay:
                    time.sleep(receiver.delay)
                payload = b"" if receiver.reply is None else json.dumps(receiver.reply).encode()
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout tests)
                    pass

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def event(kind: notify.Event = "success", **fields: Any) -> DeployEvent:
    values: dict[str, Any] = {"deploy_id": "20261125T173000Z-abc1234", "app": "shop",
                              "version": "v2", "hosts": ["web-1", "web-2"], "duration": 42.5,
                              "result": "succeeded", "who": "alice@ctl"}
    values.update(fields)
    return DeployEvent(kind, **values)


# -- payloads -----------------------------------------------------------------------------------


def test_generic_webhook_receives_the_event_as_json(receiver: Receiver) -> None:
    (result,) = notify.send([notify.webhook(receiver.url())], event("success"))
    assert result.ok and result.status == 200 and result.target == "webhook"
    (req,) = receiver.requests
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["Content-Type"] == "application/json"
    body = req.json()
    assert body.pop("time").endswith("Z")
    assert body == {"event": "success", "deploy_id": "20261125T173000Z-abc1234", "app": "shop",
                    "version": "v2", "result": "succeeded", "hosts": ["web-1", "web-2"],
                    "duration": 42.5, "message": "", "who": "alice@ctl"}


def test_slack_payload_has_text_and_a_coloured_attachment_per_event(receiver: Receiver) -> None:
    hook = notify.slack(receiver.url("/slack"))
    notifier = Notifier([hook])
    for kind in notify.EVENTS:
        assert [r.ok for r in notifier.send(event(kind, message="db migrated"))] == [True]
    bodies = [r.json() for r in receiver.requests]
    assert [b["attachments"][0]["color"] for b in bodies] == ["#439FE0", "good", "danger",
                                                              "warning"]
    start, success, failure, _ = bodies
    assert start["text"] == ":rocket: shop v2: deploy 20261125T173000Z-abc1234 started: db migrated"
    assert success["text"].startswith(":white_check_mark: shop v2: deploy "
                                      "20261125T173000Z-abc1234 succeeded after 42 s")
    assert "FAILED" in failure["text"]
    fields = {f["title"]: f["value"] for f in success["attachments"][0]["fields"]}
    assert fields == {"App": "shop", "Version": "v2", "Deploy": "20261125T173000Z-abc1234",
                      "Result": "succeeded", "Hosts (2)": "web-1, web-2", "By": "alice@ctl"}


def test_a_webhook_gets_only_the_events_it_subscribed_to(receiver: Receiver) -> None:
    notifier = Notifier([notify.webhook(receiver.url("/all")),
                         notify.webhook(receiver.url("/bad"), name="pager",
                                        events=["failure", "rollback"])])
    assert [r.target for r in notifier.send(event("start"))] == ["webhook"]
    assert [r.target for r in notifier.send(event("rollback"))] == ["webhook", "pager"]
    assert [r.path for r in receiver.requests].count("/bad") == 1


# -- failures never fail a deploy -------------------------------------------------------------


def test_http_500_is_reported_as_a_warning_not_an_error() -> None:
    with Receiver(status=500, reply={"error": "boom"}) as r:
        (result,) = notify.send([notify.webhook(r.url())], event("failure"))
    assert not result.ok and result.status == 500
    assert result.message == 'HTTP 500: {"error": "boom"}'
    step = result.to_result()
    assert step.status is Status.OK and step.host == "(controller)"
    assert step.task == "notify webhook (failure)"
    assert step.message == 'warning: notification not delivered: HTTP 500: {"error": "boom"}'
    assert step.data["delivered"] is False


def test_a_down_receiver_is_reported_quickly() -> None:
    port = closed_port()
    started = time.monotonic()
    (result,) = notify.send([notify.webhook(f"http://127.0.0.1:{port}/x")], event("start"))
    assert time.monotonic() - started < 2
    assert not result.ok and result.status is None
    assert result.message == (f"cannot reach http://127.0.0.1:{port}/x: "
                              f"connection refused by 127.0.0.1:{port}")


def test_a_slow_receiver_is_abandoned_at_the_total_timeout() -> None:
    with Receiver(delay=3.0) as slow:
        notifier = Notifier([notify.webhook(slow.url("/a")), notify.slack(slow.url("/b"))],
                            timeout=0.5)
        started = time.monotonic()
        results = notifier.send(event("start"))
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, "two slow webhooks are waited for in parallel, 0.5 s in total"
    assert [(r.ok, r.message) for r in results] == [(False, "no answer within 0.5 s")] * 2


def test_a_bug_in_a_payload_is_reported_not_raised(receiver: Receiver) -> None:
    class Broken(notify.JsonWebhook):
        def payload(self, event: DeployEvent) -> dict[str, Any]:
            raise KeyError("version")

    (result,) = notify.send([Broken(receiver.url())], event())
    assert not result.ok and result.message == "KeyError: 'version'"
    assert receiver.requests == []


# -- secrets ----------------------------------------------------------------------------------


def test_secret_urls_and_headers_are_sent_but_never_shown(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    token = Secret("tok-4f9a1c2b")
    with Receiver(status=403, reply={"echo": SLACK_PATH}) as r:
        port = r.server.server_address[1]
        hooks = [notify.slack(Secret(r.url(SLACK_PATH))),
                 notify.webhook(r.url("/generic"), headers={"Authorization": token})]
        with caplog.at_level(logging.WARNING, logger="deploykit.notify"):
            results = Notifier(hooks).send(event("failure"))
    assert [req.path for req in sorted(r.requests, key=lambda q: q.path)] == [
        "/generic", SLACK_PATH]
    generic = next(req for req in r.requests if req.path == "/generic")
    assert generic.headers["Authorization"] == "tok-4f9a1c2b"
    assert results[0].url == f"http://127.0.0.1:{port}/********"
    assert results[0].message == 'HTTP 403: {"echo": "********"}'
    shown = caplog.text + repr(results) + repr(hooks) + str([x.to_result() for x in results])
    assert "secretpath" not in shown and "tok-4f9a1c2b" not in shown
    assert f"http://127.0.0.1:{port}/********" in caplog.text


def test_a_down_secret_url_shows_only_scheme_and_host() -> None:
    port = closed_port()
    (result,) = notify.send([notify.slack(Secret(f"http://127.0.0.1:{port}{SLACK_PATH}"))],
                            event("rollback"))
    assert result.message == (f"cannot reach http://127.0.0.1:{port}/********: "
                              f"connection refused by 127.0.0.1:{port}")


# -- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.com/x", "hooks.slack.com/services/x", ""])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        notify.webhook(url)


def test_secret_url_is_redacted_in_the_configuration_error() -> None:
    with pytest.raises(ConfigError) as info:
        notify.slack(Secret("gopher://example.com/secretpath"))
    assert "secretpath" not in str(info.value)


def test_unknown_events_and_timeouts_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown event"):
        notify.webhook("http://127.0.0.1/x", events=["deployed"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="must be one of"):
        DeployEvent("done", "id", "app")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout must be positive"):
        Notifier([], timeout=0)


# -- one HTTP client: no redirect, no proxy ----------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_answer_never_followed(status: int) -> None:
    """urllib followed a 302 as a GET without the body; the checks' client does not follow."""
    with Receiver() as target:
        class Redirect(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Location", target.url("/moved"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            (result,) = notify.send([notify.webhook(f"http://127.0.0.1:{port}/hook")], event())
        finally:
            server.shutdown()
            server.server_close()
    assert not result.ok and result.status == status
    assert result.message == f"HTTP {status}"
    assert target.requests == []  # nothing reached the Location, as GET or otherwise


def test_proxy_variables_are_not_used(receiver: Receiver, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    (result,) = notify.send([notify.webhook(receiver.url("/direct"))], event())
    assert result.ok, result.message
    assert [r.path for r in receiver.requests] == ["/direct"]


# -- apprise (deploykit[notify]) and failures before the deploy ------------------------------------


def test_apprise_delivers_to_a_local_json_receiver(receiver: Receiver) -> None:
    pytest.importorskip("apprise")
    port = receiver.server.server_address[1]
    target = notify.apprise_url(f"json://ops:pa55word@127.0.0.1:{port}/apprise")
    (result,) = notify.send([target], event("failure", message="health gate failed"))
    assert result.ok, result.message
    assert (result.target, result.url) == ("json", "json://********")
    (request,) = receiver.requests
    assert request.method == "POST" and request.path == "/apprise"
    body = request.json()
    assert body["title"] == "shop v2: deploy 20261125T173000Z-abc1234 FAILED"
    assert body["type"] == "failure"
    assert "message: health gate failed" in body["message"]
    assert "hosts: web-1, web-2" in body["message"]
    assert "pa55word" not in repr(target) + repr(result)


def test_apprise_refuses_an_url_it_does_not_know() -> None:
    pytest.importorskip("apprise")
    with pytest.raises(ConfigError, match=r"apprise does not understand the URL 'nope://\*"):
        notify.apprise_url("nope://secret-token@somewhere")


def test_without_apprise_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setitem(__import__("sys").modules, "apprise", None)
    with pytest.raises(ConfigError, match=r"install deploykit\[notify\]"):
        notify.apprise_url("json://127.0.0.1:9/x")


def test_a_failed_preflight_notifies_every_target(receiver: Receiver) -> None:
    pytest.importorskip("apprise")
    port = receiver.server.server_address[1]
    targets = [notify.webhook(receiver.url("/json")),
               notify.apprise_url(f"json://127.0.0.1:{port}/apprise"),
               notify.webhook(receiver.url("/starts-only"), events=["start"])]
    results = notify.stage_failed(Notifier(targets), "pre-flight", deploy_id="d9", app="shop",
                                  version="v3", message="db-1: disk full")
    assert [(r.target, r.ok) for r in results] == [("webhook", True), ("json", True)]
    by_path = {r.path: r.json() for r in receiver.requests}
    assert set(by_path) == {"/json", "/apprise"}
    assert by_path["/json"]["event"] == "failure"
    assert by_path["/json"]["result"] == "pre-flight failed"
    assert by_path["/json"]["message"] == "db-1: disk full"
    assert "result: pre-flight failed" in by_path["/apprise"]["message"]
    assert notify.stage_failed(None, "build", deploy_id="d9", app="shop", message="x") == []
