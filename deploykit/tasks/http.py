"""HTTP checks, run from the controller against the hosts' addresses.

Plain functions for scripts::

    from deploykit.tasks import http

    http.wait_for("http://10.0.0.5/health", json_expect={"status": "ok", "checks.db": "ok"})
    http.expect_version("http://10.0.0.5/version", "1.4.2")
    m = http.measure("http://10.0.0.5/", n=200, concurrency=8)
    m.error_rate, m.p95                                      # 0.0, 0.012 (seconds)

and the same as steps for a :class:`~deploykit.runner.Runner`, where ``{address}``
in the URL is the host's inventory address (``{name}``: its inventory name)::

    http.wait_for_task("http://{address}/health", json_expect={"status": "ok"})
    http.measure_task("http://{address}/", n=200, max_error_rate=0.01, max_p95=0.5)

The checks use :mod:`http.client` (no proxy from the environment, no new
dependency), one new connection per request (``Connection: close``), and never
follow redirects. Every loop is bounded: ``wait_for`` by ``retries`` (each attempt
by ``timeout``), ``measure`` by ``n`` and ``max_duration``. A failure raises
:class:`HttpCheckError` with a report of the last response: status, elapsed time,
a body excerpt, or the connection error.

With ``via_ssh=True`` a step requests the URL as seen from the host, through its
SSH connection (an app listening on 127.0.0.1 only, before nginx sends it traffic)::

    http.wait_for_task("http://127.0.0.1:8002/health", via_ssh=True)

The steps do nothing on the host (their probe sends nothing over SSH): a step's
result is ``ok`` or ``failed``, never ``changed``, with the figures in
``result.data``. They only read, so they also run in check mode (unless
``in_check_mode=False``, which reports them ``skipped`` there).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, TaskError
from deploykit.result import Result, Status
from deploykit.task import Facts, Observation, UndoStack
from deploykit.tunnel import Tunnel

__all__ = [
    "PRESENT",
    "HttpCheckError",
    "HttpTask",
    "MeasureTask",
    "Measurement",
    "Response",
    "WaitForTask",
    "checker",
    "expect_version",
    "expect_version_task",
    "fill_url",
    "json_path",
    "measure",
    "measure_task",
    "percentile",
    "request",
    "wait_for",
    "wait_for_task",
]

MAX_BODY = 1024 * 1024
"""Bytes of a response body read at most (the rest is not read)."""
EXCERPT = 200
"""Characters of a body shown in reports."""
MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 64
USER_AGENT = "deploykit-http-check"

StatusSpec = int | Collection[int]
_MISSING = object()


class _Present:
    """``json_expect={"a.b": PRESENT}``: the field must exist, any value."""

    def __repr__(self) -> str:
        return "PRESENT"


PRESENT: Any = _Present()


# -- one request --------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """What one request got: an HTTP response (``status``), or a connection ``error``."""

    url: str
    status: int | None
    elapsed: float
    reason: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.body)

    def excerpt(self, limit: int = EXCERPT) -> str:
        """The start of the body on one line, quoted, ``...`` when cut."""
        text = " ".join(self.text.split())
        return repr(text[:limit]) + ("..." if len(text) > limit else "")

    def describe(self) -> str:
        """``HTTP 503 Service Unavailable after 0.004 s, body: '...'``, or the error."""
        if self.status is None:
            return f"{self.error} (after {self.elapsed:.3f} s)"
        return (f"HTTP {self.status} {self.reason}".rstrip()
                + f" after {self.elapsed:.3f} s, body: {self.excerpt()}")

    def summary(self) -> dict[str, Any]:
        """The response as plain data for ``result.data``."""
        return {"url": self.url, "status": self.status, "elapsed": round(self.elapsed, 6),
                "body": self.text[:EXCERPT], "error": self.error}


def _target(url: str) -> tuple[str, str, int | None, str]:
    """``(scheme, host, port, path?query)`` of an http(s) URL; ConfigError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid URL {url!r}: expected http://host[:port]/path "
                          "or https://...")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def _error_text(exc: BaseException, host: str, port: int, timeout: float) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no response from {where} within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"{where} closed the connection without a response"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot reach {where}: {exc.strerror}"
    return f"request to {where} failed: {type(exc).__name__}: {exc}"


def request(url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
            timeout: float = 5.0, body: bytes | None = None) -> Response:
    """Send one request and return what came back; never raises for a network problem.

    A refused connection, a timeout (``timeout`` seconds for the connect and for
    each read) or a broken response gives a :class:`Response` with ``status``
    None and ``error`` saying what happened. At most :data:`MAX_BODY` bytes of
    the body are read. Raises :class:`ConfigError` for a malformed URL.
    """
    scheme, host, given_port, path = _target(url)
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, not {timeout!r}")
    port = given_port or (443 if scheme == "https" else 80)  # explicit: IPv6 hosts have ':'
    conn: http.client.HTTPConnection
    if scheme == "https":
        import ssl  # only when needed: it costs import time

        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = {"User-Agent": USER_AGENT, "Connection": "close", **(headers or {})}
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read(MAX_BODY)
        return Response(url, resp.status, time.monotonic() - started, resp.reason,
                        dict(resp.getheaders()), data)
    except (OSError, http.client.HTTPException) as exc:
        return Response(url, None, time.monotonic() - started,
                        error=_error_text(exc, host, port, timeout))
    finally:
        conn.close()


# -- wait_for and expect_version ----------------------------------------------------------


class HttpCheckError(TaskError):
    """An HTTP check failed; ``response`` is the last one (None if none was made)."""

    def __init__(self, message: str, *, url: str, response: Response | None, attempts: int,
                 elapsed: float, host: str | None = None, task: str | None = None) -> None:
        super().__init__(message, host=host, task=task)
        self.url = url
        self.response = response
        self.attempts = attempts
        self.elapsed = elapsed


def json_path(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``"checks.db"``, ``"items.0.id"``) in JSON data.

    Raises KeyError naming the first missing part.
    """
    value = data
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def _statuses(status: StatusSpec) -> frozenset[int]:
    wanted = frozenset([status] if isinstance(status, int) else status)
    if not wanted or any(isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599
                         for s in wanted):
        raise ConfigError(f"status must be an HTTP status or a collection of them, "
                          f"not {status!r}")
    return wanted


def _json_mismatch(response: Response, expect: Mapping[str, Any]) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return f"body is not JSON: {response.excerpt(80)}"
    for path, wanted in expect.items():
        try:
            got = json_path(data, path)
        except KeyError as exc:
            return f"JSON {path}: missing (no {exc.args[0]!r})"
        if wanted is not PRESENT and got != wanted:
            return f"JSON {path}: expected {wanted!r}, got {got!r}"
    return None


def checker(status: StatusSpec, json_expect: Mapping[str, Any] | None,
             contains: str | None, pattern: re.Pattern[str] | None = None
             ) -> Callable[[Response], str | None]:
    """A function saying why a response is not the expected one (None: it is): status in
    ``status``, every ``json_expect`` path equal to its value (:data:`PRESENT`: there at
    all), ``contains`` in the body, ``pattern`` found in the body."""
    wanted = _statuses(status)
    expect = dict(json_expect or {})
    for path in expect:
        if not isinstance(path, str) or not path or "" in path.split("."):
            raise ConfigError(f"json_expect: invalid path {path!r} (use 'a.b.c')")

    def mismatch(response: Response) -> str | None:
        if response.status is None:
            return response.error
        if response.status not in wanted:
            shown = " or ".join(str(s) for s in sorted(wanted))
            return f"status {response.status}, expected {shown}"
        if expect:
            reason = _json_mismatch(response, expect)
            if reason:
                return reason
        if contains is not None and contains not in response.text:
            return f"body does not contain {contains!r}"
        if pattern is not None and pattern.search(response.text) is None:
            return f"body does not match {pattern.pattern!r}"
        return None

    return mismatch


_checker = checker  # the name older callers use


def _poll(url: str, mismatch: Callable[[Response], str | None], *, retries: int,
          interval: float, timeout: float, headers: Mapping[str, str] | None,
          what: str) -> Response:
    """Request ``url`` until ``mismatch`` says nothing, at most ``retries + 1`` times."""
    _target(url)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100_000:
        raise ConfigError(f"retries must be an integer from 0 to 100000, not {retries!r}")
    if interval < 0:
        raise ConfigError(f"interval must be >= 0, not {interval!r}")
    started = time.monotonic()
    reason: str | None = None
    response: Response | None = None
    for attempt in range(1, retries + 2):
        if attempt > 1:
            time.sleep(interval)
        response = request(url, headers=headers, timeout=timeout)
        reason = mismatch(response)
        if reason is None:
            return response
    assert response is not None
    elapsed = time.monotonic() - started
    tries = f"{retries + 1} attempt{'s' if retries else ''}"
    last = "" if response.status is None else f"; last response: {response.describe()}"
    raise HttpCheckError(f"GET {url}: {what} after {tries} in {elapsed:.1f} s: {reason}{last}",
                         url=url, response=response, attempts=retries + 1, elapsed=elapsed)


def wait_for(url: str, *, status: StatusSpec = 200, json_expect: Mapping[str, Any] | None = None,
             contains: str | None = None, retries: int = 30, interval: float = 1.0,
             timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> Response:
    """GET ``url`` until it answers as expected; return that response.

    Args:
        url: an ``http://`` or ``https://`` URL.
        status: the expected status (or a collection of accepted ones).
        json_expect: dotted path -> expected value in the JSON body
            (``{"status": "ok", "checks.db": "ok"}``), compared with ``==``.
        contains: a text the body must contain.
        retries: attempts after the first (0: one attempt only).
        interval: seconds between attempts.
        timeout: seconds for each attempt's connect and each read.
        headers: extra request headers (e.g. ``{"Host": "shop.example.com"}``).

    Takes at most about ``(retries + 1) * timeout + retries * interval`` seconds.
    Raises :class:`HttpCheckError` when no attempt matched, with why the last one
    did not (``status 503, expected 200``, ``JSON checks.db: expected 'ok', got
    'down'``, ``connection refused by 10.0.0.5:80``) and the last response:
    status, elapsed time, a body excerpt.
    """
    return _poll(url, _checker(status, json_expect, contains), retries=retries,
                 interval=interval, timeout=timeout, headers=headers, what="not ready")


def _version_checker(version: str, field_path: str) -> Callable[[Response], str | None]:
    if not isinstance(version, str) or not version:
        raise ConfigError(f"expect_version: version must be a non-empty string, not {version!r}")
    ok_status = _checker(200, None, None)

    def mismatch(response: Response) -> str | None:
        reason = ok_status(response)
        if reason:
            return reason
        try:
            data = response.json()
        except ValueError:
            data = _MISSING
        if isinstance(data, Mapping):
            try:
                got = json_path(data, field_path)
            except KeyError:
                return f"JSON has no {field_path!r}: {response.excerpt(80)}"
        elif isinstance(data, str):  # a JSON string: "1.4.2"
            got = data
        else:
            got = response.text.strip()
        if str(got) != version:
            return f"version is {got!r}, expected {version!r}"
        return None

    return mismatch


def expect_version(url: str, version: str, *, field: str = "version", retries: int = 0,
                   interval: float = 1.0, timeout: float = 5.0,
                   headers: Mapping[str, str] | None = None) -> Response:
    """Check that ``url`` reports ``version``; return the response.

    A JSON object body is read at the dotted path ``field`` (``{"version":
    "1.4.2"}``), a JSON string is the version itself, and any other body is
    compared whole, stripped (``1.4.2\\n``). The
    status must be 200. ``retries``, ``interval``, ``timeout``, ``headers`` as for
    :func:`wait_for` (default: one attempt). Raises :class:`HttpCheckError`
    (``version is '1.4.1', expected '1.4.2'``) with the last response.
    """
    return _poll(url, _version_checker(version, field), retries=retries, interval=interval,
                 timeout=timeout, headers=headers, what="wrong version")


# -- measure ------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ascending values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` saw. Latencies are seconds, over every request that got an
    HTTP response (any status); requests without one count as errors only.

    ``statuses`` counts responses by status (``"200"``) plus ``"error"`` for
    requests with no response; ``complete`` is False when ``max_duration`` stopped
    the run before ``requested`` requests were sent.
    """

    url: str
    requested: int
    requests: int
    errors: int
    statuses: dict[str, int]
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None
    duration: float
    complete: bool
    first_error: str | None = None

    @property
    def error_rate(self) -> float:
        """Errors / requests sent (0.0 when none was sent)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def rate(self) -> float:
        """Requests per second over the run."""
        return self.requests / self.duration if self.duration > 0 else 0.0

    def summary(self) -> str:
        """``200 requests, 2 errors (1.0%), p50 4 ms, p95 9 ms, p99 12 ms in 1.3 s``."""
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"
        text = (f"{self.requests} requests, {self.errors} errors ({self.error_rate:.1%}), "
                f"p50 {ms(self.p50)}, p95 {ms(self.p95)}, p99 {ms(self.p99)}, "
                f"max {ms(self.max)} in {self.duration:.1f} s")
        if not self.complete:
            text += f" (stopped by max_duration: {self.requests} of {self.requested} sent)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data (with ``error_rate`` and ``rate``)."""
        data = asdict(self)
        data.update(error_rate=self.error_rate, rate=self.rate)
        return data


def _check_measure(n: int, concurrency: int, max_duration: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REQUESTS:
        raise ConfigError(f"n must be an integer from 1 to {MAX_REQUESTS}, not {n!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
            or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, "
                          f"not {concurrency!r}")
    if not 0 < max_duration <= 3600:
        raise ConfigError(f"max_duration must be in (0, 3600] seconds, not {max_duration!r}")


def measure(url: str, *, n: int = 100, concurrency: int = 4, timeout: float = 5.0,
            max_duration: float = 60.0, headers: Mapping[str, str] | None = None,
            ok_status: Collection[int] | None = None) -> Measurement:
    """Send ``n`` GET requests to ``url``, ``concurrency`` at a time; return the figures.

    Args:
        url: an ``http://`` or ``https://`` URL.
        n: requests to send (1 to 100000).
        concurrency: requests in flight at once (1 to 64 threads).
        timeout: seconds for each request's connect and each read; a request that
            times out is an error.
        max_duration: no request starts after this many seconds: the run takes at
            most ``max_duration + timeout`` (then ``complete`` is False).
        headers: extra request headers.
        ok_status: statuses that are not errors (default: 200-399; 4xx and 5xx
            are errors, as are requests without a response).

    Returns a :class:`Measurement`: ``error_rate``, ``p50``/``p95``/``p99``/``max``/
    ``mean`` latency (nearest rank), counts by status, duration.
    """
    _target(url)
    _check_measure(n, concurrency, max_duration)
    accepted = None if ok_status is None else _statuses(ok_status)
    lock = threading.Lock()
    sent = 0
    responses: list[Response] = []
    started = time.monotonic()
    stop_at = started + max_duration

    def worker() -> None:
        nonlocal sent
        while True:
            with lock:
                if sent >= n or time.monotonic() >= stop_at:
                    return
                sent += 1
            response = request(url, headers=headers, timeout=timeout)
            with lock:
                responses.append(response)

    with ThreadPoolExecutor(max_workers=min(concurrency, n)) as pool:
        for future in [pool.submit(worker) for _ in range(min(concurrency, n))]:
            future.result()
    duration = time.monotonic() - started

    def is_error(r: Response) -> bool:
        if r.status is None:
            return True
        return r.status not in accepted if accepted is not None else not 200 <= r.status < 400

    statuses: dict[str, int] = {}
    for r in responses:
        key = "error" if r.status is None else str(r.status)
        statuses[key] = statuses.get(key, 0) + 1
    latencies = sorted(r.elapsed for r in responses if r.status is not None)
    failures = [r for r in responses if is_error(r)]
    first = failures[0] if failures else None
    return Measurement(
        url=url, requested=n, requests=len(responses), errors=len(failures),
        statuses=dict(sorted(statuses.items())),
        p50=percentile(latencies, 50), p95=percentile(latencies, 95),
        p99=percentile(latencies, 99), max=latencies[-1] if latencies else None,
        mean=sum(latencies) / len(latencies) if latencies else None,
        duration=duration, complete=len(responses) == n,
        first_error=None if first is None else first.describe())


# -- as tasks -----------------------------------------------------------------------------


def fill_url(url: str, conn: Connection) -> str:
    """``url`` with ``{address}`` (the host's address; IPv6 in brackets) and ``{name}``
    (its inventory name) filled in from ``conn.host``."""
    address = conn.host.address
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return url.replace("{address}", address).replace("{name}", conn.host.name)


class HttpTask(Observation):
    """Base of the HTTP check steps: nothing to probe on the host, nothing to change.

    With ``via_ssh`` the request goes through an SSH port forward
    (:class:`~deploykit.tunnel.Tunnel`) over the host's connection: the URL's host
    and port are then as seen *from the host* (``http://127.0.0.1:8002/health``: an
    app that listens on loopback only, checked before nginx sends it traffic). The
    ``Host`` header keeps the URL's host; reports show the URL as given.
    """

    kind: ClassVar[str] = "http"

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 via_ssh: bool = False, in_check_mode: bool = True,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        scheme = _target(url.replace("{address}", "host").replace("{name}", "host"))[0]
        if via_ssh and scheme != "http":
            raise ConfigError(f"via_ssh works with http:// URLs only, not {url!r}")
        self.url = url
        self.headers = dict(headers or {})
        self.via_ssh = via_ssh
        self.in_check_mode = in_check_mode

    def target(self) -> str:
        return self.url

    @abstractmethod
    def check(self, url: str, headers: Mapping[str, str], result: Result) -> None:
        """Run the check on the filled-in ``url``; fill ``result`` (data, message), and
        raise :class:`HttpCheckError` when it fails."""

    def _checked(self, url: str, headers: Mapping[str, str], result: Result) -> None:
        try:
            self.check(url, headers, result)
        except HttpCheckError as exc:
            result.status, result.message = Status.FAILED, exc.message
            result.data["attempts"] = exc.attempts
            if exc.response is not None:
                result.data["response"] = exc.response.summary()

    def _through_tunnel(self, conn: Connection, url: str, result: Result) -> None:
        _, host, port, path = _target(url)
        port = port or 80
        shown = host if port == 80 else f"{host}:{port}"
        headers = {"Host": shown, **self.headers}
        with Tunnel(conn, host, port) as local:
            self._checked(f"http://127.0.0.1:{local}{path}", headers, result)
        local_netloc, remote = f"127.0.0.1:{local}", f"{host}:{port}"
        # a port the host refuses shows as a forward that closes or resets at once
        closed = f"connection to {remote} refused or closed"
        for text in (f"cannot reach {local_netloc}: Connection reset by peer",
                     f"{local_netloc} closed the connection without a response"):
            result.message = result.message.replace(text, closed)
        result.message = result.message.replace(local_netloc, remote)
        response = result.data.get("response")
        if isinstance(response, dict):
            response["url"] = url
            if response.get("error"):
                response["error"] = closed
        if result.failed:
            result.message += f" (through SSH to {conn.name})"

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """``ok`` with the figures in ``data``, or ``failed`` with the report."""
        started = time.monotonic()
        result = Result(host=conn.name, task=self.name, status=Status.OK, check=check)
        if check and not self.in_check_mode:
            result.status, result.message = Status.SKIPPED, "not run in check mode"
            return result
        url = fill_url(self.url, conn)
        result.data["url"] = url
        try:
            if self.via_ssh or conn.needs_proxy:
                self._through_tunnel(conn, url, result)
            else:
                self._checked(url, self.headers, result)
        except DeployError as exc:  # a bad URL, or no SSH connection for the tunnel
            result.status, result.message = Status.FAILED, exc.message
        result.duration = time.monotonic() - started
        return result


class WaitForTask(HttpTask):
    """A step running :func:`wait_for`. See :func:`wait_for_task`."""

    kind = "http.wait_for"

    def __init__(self, url: str, *, status: StatusSpec, json_expect: Mapping[str, Any] | None,
                 contains: str | None, retries: int, interval: float, timeout: float,
                 headers: Mapping[str, str] | None, via_ssh: bool, in_check_mode: bool,
                 name: str | None) -> None:
        super().__init__(url, headers=headers, via_ssh=via_ssh, in_check_mode=in_check_mode,
                         name=name)
        self.mismatch = _checker(status, json_expect, contains)
        self.retries, self.interval, self.timeout = retries, interval, timeout
        self.what = "not ready"

    def check(self, url: str, headers: Mapping[str, str], result: Result) -> None:
        response = _poll(url, self.mismatch, retries=self.retries, interval=self.interval,
                         timeout=self.timeout, headers=headers, what=self.what)
        result.data["response"] = response.summary()
        result.message = response.describe()


def wait_for_task(url: str, *, status: StatusSpec = 200,
                  json_expect: Mapping[str, Any] | None = None, contains: str | None = None,
                  retries: int = 30, interval: float = 1.0, timeout: float = 5.0,
                  headers: Mapping[str, str] | None = None, via_ssh: bool = False,
                  in_check_mode: bool = True, name: str | None = None) -> WaitForTask:
    """:func:`wait_for` as a step: ``ok`` once ``url`` answers as expected, else ``failed``.

    ``{address}``/``{name}`` in ``url`` are the host's address and name. ``data``
    holds ``url``, ``response`` (status, elapsed, body excerpt, error) and, on
    failure, ``attempts``; the message is the report. Arguments as for
    :func:`wait_for`; ``via_ssh=True`` requests the URL as seen from the host,
    through the host's SSH connection (see :class:`HttpTask`);
    ``in_check_mode=False`` skips the step in check mode.
    """
    return WaitForTask(url, status=status, json_expect=json_expect, contains=contains,
                       retries=retries, interval=interval, timeout=timeout, headers=headers,
                       via_ssh=via_ssh, in_check_mode=in_check_mode, name=name)


def expect_version_task(url: str, version: str, *, field: str = "version", retries: int = 0,
                        interval: float = 1.0, timeout: float = 5.0,
                        headers: Mapping[str, str] | None = None, via_ssh: bool = False,
                        in_check_mode: bool = True, name: str | None = None) -> WaitForTask:
    """:func:`expect_version` as a step (``data``, ``{address}`` and ``via_ssh`` as for
    :func:`wait_for_task`)."""
    task = WaitForTask(url, status=200, json_expect=None, contains=None, retries=retries,
                       interval=interval, timeout=timeout, headers=headers, via_ssh=via_ssh,
                       in_check_mode=in_check_mode,
                       name=name or f"http.expect_version {url} {version}")
    task.mismatch = _version_checker(version, field)
    task.what = "wrong version"
    return task


class MeasureTask(HttpTask):
    """A step running :func:`measure`, failing above thresholds. See :func:`measure_task`."""

    kind = "http.measure"

    def __init__(self, url: str, *, n: int, concurrency: int, timeout: float,
                 max_duration: float, headers: Mapping[str, str] | None,
                 ok_status: Collection[int] | None, max_error_rate: float | None,
                 max_p95: float | None, max_p99: float | None, via_ssh: bool,
                 in_check_mode: bool, name: str | None) -> None:
        super().__init__(url, headers=headers, via_ssh=via_ssh, in_check_mode=in_check_mode,
                         name=name)
        _check_measure(n, concurrency, max_duration)
        if ok_status is not None:
            _statuses(ok_status)
        self.options: dict[str, Any] = dict(n=n, concurrency=concurrency, timeout=timeout,
                                            max_duration=max_duration, ok_status=ok_status)
        self.limits = {"error_rate": max_error_rate, "p95": max_p95, "p99": max_p99}

    def check(self, url: str, headers: Mapping[str, str], result: Result) -> None:
        m = measure(url, headers=headers, **self.options)
        result.data.update(m.as_dict())
        result.message = m.summary()
        over = []
        for figure, limit in self.limits.items():
            value = m.error_rate if figure == "error_rate" else getattr(m, figure)
            if limit is not None and (value is None or value > limit):
                over.append(f"{figure} {'-' if value is None else f'{value:.3f}'} > {limit:g}")
        if over:
            raise HttpCheckError(f"GET {url}: {', '.join(over)}: {m.summary()}"
                                 + (f"; first error: {m.first_error}" if m.first_error else ""),
                                 url=url, response=None, attempts=m.requests,
                                 elapsed=m.duration)


def measure_task(url: str, *, n: int = 100, concurrency: int = 4, timeout: float = 5.0,
                 max_duration: float = 60.0, headers: Mapping[str, str] | None = None,
                 ok_status: Collection[int] | None = None,
                 max_error_rate: float | None = None, max_p95: float | None = None,
                 max_p99: float | None = None, via_ssh: bool = False,
                 in_check_mode: bool = True, name: str | None = None) -> MeasureTask:
    """:func:`measure` as a step, a gate when given limits (a canary's health check).

    ``failed`` when the error rate is above ``max_error_rate`` (a fraction:
    0.01 = 1 %) or p95/p99 latency above ``max_p95``/``max_p99`` seconds (a run
    with no response at all fails any latency limit); ``ok`` otherwise. ``data``
    holds every :class:`Measurement` figure (``error_rate``, ``p50``, ``p95``,
    ``p99``, ``max``, ``mean``, ``statuses``, ``requests``, ``duration`` ...) and
    ``url``; the message is the summary. Other arguments as for :func:`measure`;
    ``{address}``/``{name}`` and ``via_ssh`` as for :func:`wait_for_task` (through SSH,
    every request shares the host's one SSH connection: latencies include it).
    """
    for label, limit in (("max_error_rate", max_error_rate), ("max_p95", max_p95),
                         ("max_p99", max_p99)):
        if limit is not None and limit < 0:
            raise ConfigError(f"{label} must be >= 0, not {limit!r}")
    return MeasureTask(url, n=n, concurrency=concurrency, timeout=timeout,
                       max_duration=max_duration, headers=headers, ok_status=ok_status,
                       max_error_rate=max_error_rate, max_p95=max_p95, max_p99=max_p99,
                       via_ssh=via_ssh, in_check_mode=in_check_mode, name=name)
