"""Deploy notifications: Slack-compatible and generic JSON webhooks, from the controller.

::

    from deploykit.tasks import notify

    notifier = notify.Notifier([
        notify.slack(Secret(os.environ["SLACK_WEBHOOK_URL"])),
        notify.webhook("https://ops.example.com/deploys", headers={"Authorization": token}),
    ], timeout=5.0)
    event = notify.DeployEvent("start", deploy_id, app="shop", version="v2", hosts=names)
    for outcome in notifier.send(event):
        print(outcome.to_result().message)

A notification never fails nor blocks a deploy: :meth:`Notifier.send` never
raises, sends to every webhook in parallel and returns after ``timeout``
seconds **in total** at most (default 5 s), whatever the receivers do (down,
HTTP 500, too slow). Each webhook gets a :class:`NotifyResult` saying what
happened; failures are also logged (``deploykit.notify``, level WARNING).

Webhook URLs may be :class:`~deploykit.secrets.Secret` (a Slack URL *is* a
credential): they are then shown as ``https://hooks.slack.com/********`` in
every result, log line and error, and so are Secret header values. Requests
use the HTTP checks' client (:func:`deploykit.tasks.http.request`): a redirect
is an answer, never followed (a POST must not become a GET without its body),
and no proxy is taken from the environment.

:func:`http_request` and :func:`display_url` are the small HTTP helpers shared
with :mod:`deploykit.tasks.checks` (the CI status check).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from deploykit import humanize
from deploykit.errors import ConfigError
from deploykit.result import Result, Status
from deploykit.secrets import REDACTED, Secret, redact
from deploykit.tasks import http

__all__ = [
    "CONTROLLER",
    "EVENTS",
    "AppriseTarget",
    "DeployEvent",
    "HttpReply",
    "JsonWebhook",
    "Notifier",
    "NotifyResult",
    "SlackWebhook",
    "Target",
    "Webhook",
    "apprise_url",
    "display_url",
    "http_request",
    "send",
    "slack",
    "stage_failed",
    "url_secrets",
    "webhook",
]

log = logging.getLogger("deploykit.notify")

Event = Literal["start", "success", "failure", "rollback"]
EVENTS: tuple[Event, ...] = ("start", "success", "failure", "rollback")
CONTROLLER = "(controller)"
"""The ``host`` of results produced on the controller rather than on a target host."""
DEFAULT_TIMEOUT = 5.0


# -- HTTP ------------------------------------------------------------------------------------


def display_url(url: str | Secret) -> str:
    """The URL as people may see it: a Secret URL keeps only scheme and host."""
    if not isinstance(url, Secret):
        return url
    parts = urllib.parse.urlsplit(url.reveal())
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}/{REDACTED}"


def url_secrets(url: str | Secret) -> list[Secret]:
    """What to redact for a Secret URL: the URL itself, and its path and query (the
    credential part, which an error page may echo without the host)."""
    if not isinstance(url, Secret):
        return []
    parts = urllib.parse.urlsplit(url.reveal())
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return [url, *(Secret(t) for t in {tail, parts.path, parts.query} if len(t) > 1)]


def _check_url(url: str | Secret, what: str) -> None:
    parts = urllib.parse.urlsplit(url.reveal() if isinstance(url, Secret) else url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: not an http(s) URL: {display_url(url)!r}")


@dataclass(frozen=True)
class HttpReply:
    """What an HTTP request got: ``status`` (None when no answer), body, or ``error``."""

    status: int | None
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.body.decode("utf-8"))

    def describe(self) -> str:
        """``HTTP 500: <body start>``, or the error (``connection refused``, ``timed out``)."""
        if self.status is None:
            return self.error
        text = f"HTTP {self.status}"
        detail = self.body.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        return f"{text}: {detail}" if detail and not self.ok else text


def http_request(
    url: str | Secret,
    *,
    method: str = "GET",
    payload: Any = None,
    headers: Mapping[str, str | Secret] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_body: int = 1024 * 1024,
) -> HttpReply:
    """One HTTP request with the HTTP checks' client (:func:`deploykit.tasks.http.request`:
    no redirect followed, so a POST never turns into a GET; no proxy from the
    environment); never raises for network or HTTP errors.

    ``payload`` is sent as JSON. Secret URL parts and header values are
    revealed only in the request; every error text is redacted.
    ``timeout`` bounds each socket operation (connect, each read).
    """
    secrets = [*url_secrets(url), *(v for v in (headers or {}).values() if isinstance(v, Secret))]
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    sent = {} if data is None else {"Content-Type": "application/json"}
    for name, value in (headers or {}).items():
        sent[name] = value.reveal() if isinstance(value, Secret) else value
    try:
        response = http.request(url.reveal() if isinstance(url, Secret) else url,
                                method=method, headers=sent, timeout=timeout, body=data)
    except ConfigError as exc:
        return HttpReply(None, error=redact(f"request to {display_url(url)} failed: "
                                            f"{exc.message}", secrets))
    if response.status is None:
        return HttpReply(None, error=redact(f"cannot reach {display_url(url)}: "
                                            f"{response.error}", secrets))
    body = response.body[:max_body]
    if not 200 <= response.status < 300:
        body = redact(body.decode("utf-8", "replace"), secrets).encode()
    return HttpReply(response.status, body)


# -- events and webhooks ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeployEvent:
    """What happened: ``start``, ``success``, ``failure`` or ``rollback`` of a deploy."""

    event: Event
    deploy_id: str
    app: str
    version: str | None = None
    result: str | None = None
    hosts: Sequence[str] = ()
    duration: float | None = None
    message: str = ""
    who: str = ""
    time: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ConfigError(f"notification event must be one of {', '.join(EVENTS)}, "
                              f"not {self.event!r}")

    def to_dict(self) -> dict[str, Any]:
        """The generic webhook's JSON body."""
        return {"event": self.event, "deploy_id": self.deploy_id, "app": self.app,
                "version": self.version, "result": self.result, "hosts": list(self.hosts),
                "duration": self.duration, "message": self.message, "who": self.who,
                "time": self.time}


def _check_events(name: str, events: Iterable[Event]) -> frozenset[Event]:
    wanted = frozenset(events)
    unknown = wanted - set(EVENTS)
    if unknown:
        raise ConfigError(f"{name}: unknown event(s) {sorted(unknown)}; "
                          f"events: {', '.join(EVENTS)}")
    return wanted


class Target(ABC):
    """Where notifications go: a name, the events it wants, how it is shown, and how
    one event is delivered."""

    kind: ClassVar[str] = "target"
    name: str
    events: frozenset[Event]

    @property
    @abstractmethod
    def display(self) -> str:
        """How the destination is shown in results and logs (credentials redacted)."""

    @property
    def secrets(self) -> list[Secret]:
        """Values to redact everywhere."""
        return []

    @abstractmethod
    def deliver(self, event: DeployEvent, timeout: float) -> tuple[bool, int | None, str]:
        """Send ``event``: ``(delivered, HTTP status or None, what happened)``."""


class Webhook(Target):
    """An HTTP webhook; subclasses say what JSON body to send."""

    kind: ClassVar[str] = "webhook"

    def __init__(self, url: str | Secret, *, name: str | None = None,
                 events: Iterable[Event] = EVENTS,
                 headers: Mapping[str, str | Secret] | None = None) -> None:
        _check_url(url, f"{self.kind} webhook")
        self.url = url
        self.name = name or self.kind
        self.events = _check_events(self.name, events)
        self.headers: dict[str, str | Secret] = dict(headers or {})

    @property
    def display(self) -> str:
        return display_url(self.url)

    def deliver(self, event: DeployEvent, timeout: float) -> tuple[bool, int | None, str]:
        reply = http_request(self.url, method="POST", payload=self.payload(event),
                             headers=self.headers, timeout=timeout)
        return reply.ok, reply.status, reply.describe()

    @property
    def secrets(self) -> list[Secret]:
        """The secret URL and header values, to redact everywhere."""
        return [*url_secrets(self.url), *(v for v in self.headers.values()
                                          if isinstance(v, Secret))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({display_url(self.url)!r}, name={self.name!r})"

    @abstractmethod
    def payload(self, event: DeployEvent) -> dict[str, Any]:
        """The JSON body for ``event``."""


_SLACK_STYLE: dict[str, tuple[str, str, str]] = {
    # event: (emoji, verb, attachment colour)
    "start": (":rocket:", "started", "#439FE0"),
    "success": (":white_check_mark:", "succeeded", "good"),
    "failure": (":x:", "FAILED", "danger"),
    "rollback": (":rewind:", "rolled back", "warning"),
}


class SlackWebhook(Webhook):
    """A Slack (or Mattermost, Rocket.Chat) incoming webhook: ``text`` + ``attachments``."""

    kind: ClassVar[str] = "slack"

    def payload(self, event: DeployEvent) -> dict[str, Any]:
        emoji, verb, color = _SLACK_STYLE[event.event]
        version = f" {event.version}" if event.version else ""
        text = f"{emoji} {event.app}{version}: deploy {event.deploy_id} {verb}"
        if event.duration is not None and event.event != "start":
            text += f" after {humanize.duration(event.duration)}"
        if event.message:
            text += f": {event.message}"
        hosts = ", ".join(event.hosts)
        fields = [
            {"title": "App", "value": event.app, "short": True},
            {"title": "Version", "value": event.version or "-", "short": True},
            {"title": "Deploy", "value": event.deploy_id, "short": True},
            {"title": "Result", "value": event.result or verb, "short": True},
            {"title": f"Hosts ({len(event.hosts)})", "value": hosts[:1000] or "-",
             "short": False},
        ]
        if event.who:
            fields.append({"title": "By", "value": event.who, "short": True})
        return {"text": text, "attachments": [
            {"fallback": text, "color": color, "fields": fields, "ts": int(time.time())}]}


class JsonWebhook(Webhook):
    """A generic webhook receiving :meth:`DeployEvent.to_dict` as JSON."""

    kind: ClassVar[str] = "webhook"

    def payload(self, event: DeployEvent) -> dict[str, Any]:
        return event.to_dict()


def slack(url: str | Secret, *, name: str = "slack",
          events: Iterable[Event] = EVENTS) -> SlackWebhook:
    """A Slack-compatible incoming webhook (give the URL as a Secret: it is a credential)."""
    return SlackWebhook(url, name=name, events=events)


def webhook(url: str | Secret, *, name: str = "webhook", events: Iterable[Event] = EVENTS,
            headers: Mapping[str, str | Secret] | None = None) -> JsonWebhook:
    """A generic JSON webhook; ``headers`` values may be Secrets (an auth token)."""
    return JsonWebhook(url, name=name, events=events, headers=headers)


# -- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyResult:
    """What one notification did. ``ok`` False is a warning, never a deploy failure."""

    target: str
    url: str  # as displayed: a Secret URL is redacted
    event: str
    ok: bool
    status: int | None = None
    message: str = ""
    duration: float = 0.0

    def to_result(self) -> Result:
        """As a step Result on the controller: always ``ok``; a failure is a warning message."""
        text = (f"sent ({self.message})" if self.ok
                else f"warning: notification not delivered: {self.message}")
        return Result(host=CONTROLLER, task=f"notify {self.target} ({self.event})",
                      status=Status.OK, message=text, duration=self.duration,
                      data={"delivered": self.ok, "http_status": self.status, "url": self.url})


class Notifier:
    """Sends deploy events to webhooks; see the module docstring.

    ``timeout`` bounds one :meth:`send` call in total (all webhooks are sent in
    parallel); ``secrets`` adds values to redact from messages.
    """

    def __init__(self, webhooks: Sequence[Target], *, timeout: float = DEFAULT_TIMEOUT,
                 secrets: Iterable[Secret] = ()) -> None:
        if timeout <= 0:
            raise ConfigError(f"notification timeout must be positive, not {timeout!r}")
        self.webhooks = list(webhooks)
        self.timeout = timeout
        self.secrets = [*secrets, *(s for w in self.webhooks for s in w.secrets)]

    def send(self, event: DeployEvent) -> list[NotifyResult]:
        """Send ``event`` to every webhook subscribed to it; never raises, never waits
        longer than ``timeout`` seconds. Returns one result per webhook sent to."""
        targets = [w for w in self.webhooks if event.event in w.events]
        results: list[NotifyResult | None] = [None] * len(targets)
        started = time.monotonic()
        deadline = started + self.timeout
        threads = []
        for index, target in enumerate(targets):
            thread = threading.Thread(target=self._deliver, args=(target, event, index, results),
                                      name=f"notify-{target.name}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        out: list[NotifyResult] = []
        for index, target in enumerate(targets):
            result = results[index]
            if result is None:  # still waiting for the receiver: give up on it
                result = NotifyResult(target.name, target.display, event.event, False,
                                      message=f"no answer within {self.timeout:g} s",
                                      duration=time.monotonic() - started)
            if not result.ok:
                log.warning("notification %s of deploy %s to %s (%s) failed: %s", event.event,
                            event.deploy_id, target.name, result.url, result.message)
            out.append(result)
        return out

    def _deliver(self, target: Target, event: DeployEvent, index: int,
                 results: list[NotifyResult | None]) -> None:
        started = time.monotonic()
        shown = target.display
        try:
            ok, status, what = target.deliver(event, self.timeout)
            results[index] = NotifyResult(target.name, shown, event.event, ok, status,
                                          redact(what, self.secrets),
                                          time.monotonic() - started)
        except Exception as exc:  # a bug must not reach the deploy: report it instead
            results[index] = NotifyResult(
                target.name, shown, event.event, False,
                message=redact(f"{type(exc).__name__}: {exc}", self.secrets),
                duration=time.monotonic() - started)


def send(webhooks: Sequence[Target], event: DeployEvent, *,
         timeout: float = DEFAULT_TIMEOUT) -> list[NotifyResult]:
    """Send one event with a one-off :class:`Notifier` (never raises)."""
    return Notifier(webhooks, timeout=timeout).send(event)


def stage_failed(notifier: Notifier | Sequence[Target] | None, stage: str, *, deploy_id: str,
                 app: str, message: str, version: str | None = None,
                 hosts: Sequence[str] = (), who: str = "",
                 duration: float | None = None) -> list[NotifyResult]:
    """Notify a ``failure`` that happened before the deploy itself ran: ``stage`` is
    ``pre-flight``, ``build``, ``lock``, ... (the event's ``result`` says
    ``<stage> failed``). What the pipeline calls when pre-flight or the build fails;
    never raises (None or no targets: nothing is sent)."""
    if notifier is None:
        return []
    if not isinstance(notifier, Notifier):
        notifier = Notifier(notifier)
    return notifier.send(DeployEvent("failure", deploy_id, app=app, version=version,
                                     result=f"{stage} failed", hosts=hosts, who=who,
                                     duration=duration, message=message))


# -- apprise: email, Telegram, PagerDuty, Discord, ... by URL (deploykit[notify]) ------------

_APPRISE_TYPE = {"start": "info", "success": "success", "failure": "failure",
                 "rollback": "warning"}


def _apprise() -> Any:
    try:
        import apprise  # optional: deploykit[notify]
    except ImportError:
        raise ConfigError("apprise notifications need the apprise package: install "
                          "deploykit[notify] (pip install 'deploykit[notify]')") from None
    return apprise


class AppriseTarget(Target):
    """Any service apprise reaches by URL (``mailtos://``, ``tgram://``, ``pagerduty://``,
    ``discord://``, ``json://``, ...). See :func:`apprise_url`."""

    kind: ClassVar[str] = "apprise"

    def __init__(self, url: str | Secret, *, name: str | None = None,
                 events: Iterable[Event] = EVENTS) -> None:
        self.url = url if isinstance(url, Secret) else Secret(url)
        scheme = self.url.reveal().partition("://")[0]
        self.name = name or scheme or self.kind
        self.events = _check_events(self.name, events)
        self._scheme = scheme
        if not _apprise().Apprise().add(self.url.reveal()):
            raise ConfigError(f"{self.name}: apprise does not understand the URL "
                              f"{self.display!r} (see https://github.com/caronc/apprise/wiki)")

    @property
    def display(self) -> str:
        return f"{self._scheme}://{REDACTED}"

    @property
    def secrets(self) -> list[Secret]:
        return [self.url]

    def __repr__(self) -> str:
        return f"AppriseTarget({self.display!r}, name={self.name!r})"

    @staticmethod
    def text(event: DeployEvent) -> tuple[str, str]:
        """``(title, body)`` of the message."""
        _, verb, _ = _SLACK_STYLE[event.event]
        version = f" {event.version}" if event.version else ""
        title = f"{event.app}{version}: deploy {event.deploy_id} {verb}"
        lines = [f"{key}: {value}" for key, value in (
            ("result", event.result), ("message", event.message),
            ("hosts", ", ".join(event.hosts)), ("by", event.who),
            ("duration", None if event.duration is None
             else humanize.duration(event.duration)), ("time", event.time)) if value]
        return title, "\n".join(lines)

    def deliver(self, event: DeployEvent, timeout: float) -> tuple[bool, int | None, str]:
        apprise = _apprise()
        sender = apprise.Apprise()
        sender.add(self.url.reveal())
        title, body = self.text(event)
        ok = bool(sender.notify(body=body, title=title,
                                notify_type=_APPRISE_TYPE[event.event]))
        return ok, None, "sent" if ok else "apprise could not deliver it (see its log)"


def apprise_url(url: str | Secret, *, name: str | None = None,
                events: Iterable[Event] = EVENTS) -> AppriseTarget:
    """A notification target by apprise URL: email, Telegram, PagerDuty, Discord and
    100 more. Needs ``deploykit[notify]``; the URL is a credential and is shown as
    ``<scheme>://********``."""
    return AppriseTarget(url, name=name, events=events)
