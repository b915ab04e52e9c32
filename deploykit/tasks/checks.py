"""Pre-flight checks: read-only tests that must pass before a deploy changes anything.

::

    from deploykit.tasks import checks

    report = checks.run_preflight(conns, [
        checks.ci_status("https://ci.example.com/repos/o/shop/commits/{sha}/status",
                         token=Secret(os.environ["CI_TOKEN"])),
        checks.git_clean("."),
        checks.resources(paths=["/", "/srv"], min_free_mb=2048, min_memory_mb=256),
        checks.ports(listening=[80], free=[8001]),
        checks.env_secrets("/srv/shop/.env", ["SECRET_KEY", "DB_PASSWORD"]),
        checks.backup("/var/backups/shop", max_age_hours=24),
        checks.reachable(5432),                      # each target host, from the controller
    ], skip=["backup"])
    print(report.render())
    report.raise_for_failures()                      # PreflightError listing every failure

Every check is a :class:`~deploykit.task.Task` whose result is ``ok`` or
``failed``, **never** ``changed``, also usable as a step of a
:class:`~deploykit.runner.Runner`. Every check is read-only: a host check
sends one ``write=False`` probe (batched with the others by the runner and by
:func:`run_preflight`); a controller check sends nothing to the host.

=================  ==========  ======================================================
check              runs on     fails when
=================  ==========  ======================================================
``ci_status``      controller  the commit's combined CI status is not ``success``
``git_clean``      controller  ``git status --porcelain`` lists anything
``resources``      host        free disk (MiB or %) or available memory below threshold
``ports``          host        a port that must listen does not, or one that must be
                               free is taken (``ss -Htln``)
``env_secrets``    host        a required key of a ``.env`` is missing, empty, a known
                               default (``changeme``, ``password`` ...), one repeated
                               character, or shorter than ``min_length``
``backup``         host        no ``*.dump`` in the directory, the newest is older than
                               ``max_age_hours``, empty, or fails its ``.sha256`` sidecar
``reachable``      controller  a TCP connect to ``host:port`` fails
``command``        host        a read-only command exits non-zero
=================  ==========  ======================================================

**Secrets never leave the host**: ``env_secrets`` parses the ``.env`` *on the
host* (awk) and prints only key names and reasons; the values never travel,
so they cannot reach a message, a result or the connection's log. A CI token
is a :class:`~deploykit.secrets.Secret` sent only in the ``Authorization``
header.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import socket
import subprocess
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deploykit import humanize
from deploykit.connection import Connection
from deploykit.errors import ConfigError, ConnectError, DeployError, TaskError
from deploykit.inventory import Host
from deploykit.result import Result, Status, to_jsonable
from deploykit.runner import prefetch
from deploykit.secrets import Secret, redact
from deploykit.shell import quote
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks.notify import CONTROLLER, display_url, http_request

__all__ = [
    "CONTROLLER",
    "DEFAULT_WEAK_VALUES",
    "BackupCheck",
    "Check",
    "CiStatusCheck",
    "CommandCheck",
    "ControllerCheck",
    "EnvSecretsCheck",
    "GitCleanCheck",
    "PortsCheck",
    "PreflightError",
    "PreflightReport",
    "ReachableCheck",
    "ResourcesCheck",
    "Verdict",
    "backup",
    "ci_status",
    "command",
    "env_secrets",
    "git_clean",
    "ports",
    "reachable",
    "resources",
    "run_preflight",
]

DEFAULT_WEAK_VALUES: tuple[str, ...] = (
    "changeme", "change-me", "change_me", "changeit", "password", "passw0rd", "passwd",
    "secret", "admin", "administrator", "postgres", "root", "default", "example", "test",
    "guest", "letmein", "qwerty", "123456", "12345678", "1234567890", "none", "null",
    "todo", "xxx",
)
"""Values an ``env_secrets`` check refuses whatever their length (compared case-insensitively)."""

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LIST_LIMIT = 5  # how many items a message lists before "and N more"


class PreflightError(TaskError):
    """One or more pre-flight checks failed; the message lists every failure."""


@dataclass
class Verdict:
    """A check's conclusion: ``problems`` (empty = passed), a one-line ``info`` for a
    pass, and structured ``data`` for reports (never a secret value)."""

    problems: list[str] = field(default_factory=list)
    info: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _listing(items: Sequence[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _tagged(output: str, tag: str) -> list[str]:
    prefix = f"{tag} "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


# -- the check base classes -------------------------------------------------------------------


class Check(Task):
    """A read-only task that passes (``ok``) or fails, never ``changed``.

    Subclasses give a probe (host checks) or :meth:`gather` (controller
    checks) and :meth:`evaluate`, a pure function of the facts, which is what
    unit tests exercise with recorded facts.
    """

    kind: ClassVar[str] = "check"
    remote: ClassVar[bool] = True
    """True when the facts come from the target host over SSH."""

    @property
    def per_host(self) -> bool:
        """True when the check runs once per target host (else once, on the controller)."""
        return True

    @abstractmethod
    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        """Judge the facts; ``host`` is the target (None for a controller-wide check)."""

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        """Empty when the check passes; raises :class:`TaskError` naming every problem."""
        verdict = self.evaluate(conn.host, facts)
        if verdict.problems:
            raise TaskError("; ".join(verdict.problems), host=conn.name, task=self.name)
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise TaskError("a check never changes a host", host=conn.name, task=self.name)

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """Probe (unless ``facts`` are given) and judge: ``ok`` with a summary, or
        ``failed`` with every problem. The same in check mode; never raises."""
        started = time.monotonic()
        conn.secrets.update(self.secrets)
        try:
            verdict = self.evaluate(conn.host, facts if facts is not None else self.probe(conn))
        except DeployError as exc:
            verdict = Verdict([exc.message])
        return self._result(conn.name, verdict, started, check, conn.secrets)

    def _result(self, host: str, verdict: Verdict, started: float, check: bool,
                secrets: Iterable[Secret] = ()) -> Result:
        found = [*secrets, *self.secrets]
        message = "; ".join(verdict.problems) if verdict.problems else verdict.info
        return Result(host=host, task=self.name,
                      status=Status.FAILED if verdict.problems else Status.OK,
                      message=redact(message, found), duration=time.monotonic() - started,
                      check=check, data=dict(to_jsonable(verdict.data, found)))


class ControllerCheck(Check):
    """A check whose facts come from the controller (HTTP, git, a TCP connect).

    As a runner step it runs for every host of the run. Its probe sends nothing:
    :meth:`parse` refuses the (empty) batched probe section so that the runner
    leaves it out and :meth:`probe` gathers the facts on the controller.
    """

    remote: ClassVar[bool] = False

    @property
    def per_host(self) -> bool:
        """Controller checks run once per deploy unless they test the target host."""
        return False

    @abstractmethod
    def gather(self, host: Host | None) -> Facts:
        """Read the facts from the controller (read-only; network errors become facts)."""

    def probe_script(self) -> str:
        return ":"

    def parse(self, output: str) -> Facts:
        raise TaskError("a controller check gathers its facts on the controller")

    def probe(self, conn: Connection) -> Facts:
        """Gather on the controller: no round trip to the host."""
        return self.gather(conn.host)

    def run_on_controller(self, host: Host | None = None) -> Result:
        """Gather and judge once, on the controller; the result's host is ``(controller)``
        (or ``host``'s name for a check about a target host). Never raises."""
        started = time.monotonic()
        try:
            verdict = self.evaluate(host, self.gather(host))
        except DeployError as exc:
            verdict = Verdict([exc.message])
        return self._result(host.name if host else CONTROLLER, verdict, started, False)


# -- CI status --------------------------------------------------------------------------------


def _git(repo_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", repo_dir, *args], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(["git"], 127, "", str(exc))


class CiStatusCheck(ControllerCheck):
    """The combined CI status of a commit is ``success``. See :func:`ci_status`."""

    kind: ClassVar[str] = "ci"

    def __init__(self, url: str | Secret, *, token: Secret | str | None = None,
                 sha: str | None = None, repo_dir: str = ".", timeout: float = 10.0,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.url = url
        self.token = Secret(token) if isinstance(token, str) else token
        self.sha = sha
        self.repo_dir = repo_dir
        self.timeout = timeout

    def target(self) -> str:
        return ""

    @property
    def secrets(self) -> Sequence[Secret]:
        return [s for s in (self.url, self.token) if isinstance(s, Secret)]

    def gather(self, host: Host | None) -> Facts:
        raw = self.url.reveal() if isinstance(self.url, Secret) else self.url
        sha = self.sha
        if "{sha}" in raw and sha is None:
            out = _git(self.repo_dir, "rev-parse", "HEAD")
            if out.returncode != 0:
                return {"error": f"cannot tell the commit to check: git rev-parse HEAD in "
                                 f"{self.repo_dir} failed: {out.stderr.strip()[:200]}"}
            sha = out.stdout.strip()
        url: str | Secret = raw.replace("{sha}", sha or "")
        if isinstance(self.url, Secret):
            url = Secret(str(url))
        headers: dict[str, str | Secret] = {"Accept": "application/vnd.github+json"}
        if self.token is not None:
            headers["Authorization"] = Secret("Bearer " + self.token.reveal())
        reply = http_request(url, headers=headers, timeout=self.timeout)
        facts: Facts = {"url": display_url(url), "sha": sha, "http_status": reply.status,
                        "error": reply.error}
        if reply.status is not None and not reply.ok:
            facts["error"] = reply.describe()
        elif reply.ok:
            try:
                body = reply.json()
                facts["state"] = str(body["state"])
                facts["statuses"] = [
                    {"context": str(s.get("context", "?")), "state": str(s.get("state", "?")),
                     "description": str(s.get("description") or "")}
                    for s in body.get("statuses") or [] if isinstance(s, dict)]
            except (ValueError, KeyError, TypeError, AttributeError):
                facts["error"] = "the answer is not a combined status ({\"state\": ...})"
        return facts

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        where = f"CI status API {facts.get('url', display_url(self.url))}"
        commit = f"commit {str(facts['sha'])[:12]}" if facts.get("sha") else "the commit"
        status = facts.get("http_status")
        if facts.get("error"):
            hint = {401: " (is the token right?)", 403: " (is the token allowed to read "
                    "statuses?)", 404: " (wrong URL, or the commit is not pushed?)"}
            return Verdict([f"{where}: {facts['error']}{hint.get(status or 0, '')}"])
        state = facts.get("state")
        statuses: list[dict[str, str]] = facts.get("statuses", [])
        data = {"state": state, "sha": facts.get("sha"), "statuses": statuses}
        if state == "success":
            return Verdict([], f"CI success for {commit} ({len(statuses)} checks)", data)
        if state == "pending":
            waiting = [s["context"] for s in statuses if s["state"] == "pending"]
            return Verdict([f"CI is still running for {commit}: "
                            f"{len(waiting)} of {len(statuses)} checks pending"
                            + (f" ({_listing(waiting)})" if waiting else "")], data=data)
        bad = [f"{s['context']} {s['state']}" + (f" ({s['description'][:100]})"
                                                  if s["description"] else "")
               for s in statuses if s["state"] not in ("success", "pending")]
        return Verdict([f"CI status of {commit} is {state}"
                        + (f": {_listing(bad)}" if bad else "")], data=data)


def ci_status(url: str | Secret, *, token: Secret | str | None = None, sha: str | None = None,
              repo_dir: str = ".", timeout: float = 10.0,
              name: str | None = None) -> CiStatusCheck:
    """The commit being deployed has a green CI: its combined status is ``success``.

    ``url`` is a GitHub-style combined status endpoint answering ``{"state":
    "success"|"pending"|"failure"|"error", "statuses": [{"context", "state",
    "description"}, ...]}``; a ``{sha}`` in it is replaced by ``sha``, by
    default the ``HEAD`` of ``repo_dir``. ``token`` (a Secret) goes in the
    ``Authorization: Bearer`` header only. ``pending`` fails too (the deploy
    would race CI), naming the checks still running; ``failure`` names the
    failing checks. Runs once, from the controller.
    """
    return CiStatusCheck(url, token=token, sha=sha, repo_dir=repo_dir, timeout=timeout, name=name)


# -- clean git tree ---------------------------------------------------------------------------


class GitCleanCheck(ControllerCheck):
    """The controller's work tree has no uncommitted change. See :func:`git_clean`."""

    kind: ClassVar[str] = "git-clean"

    def __init__(self, repo_dir: str = ".", *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.repo_dir = repo_dir

    def target(self) -> str:
        return self.repo_dir

    def gather(self, host: Host | None) -> Facts:
        out = _git(self.repo_dir, "status", "--porcelain")
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1:] or ["git failed"]}
        return {"entries": [line for line in out.stdout.splitlines() if line.strip()]}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        where = os.path.abspath(self.repo_dir)
        if "error" in facts:
            return Verdict([f"git status in {where} failed: {' '.join(facts['error'])}"])
        entries: list[str] = facts["entries"]
        if entries:
            return Verdict([f"git tree {where} is not clean: {len(entries)} uncommitted "
                            f"change(s): {_listing([e.strip() for e in entries])}"],
                           data={"changes": entries[:50]})
        return Verdict([], f"git tree {where} is clean")


def git_clean(repo_dir: str = ".", *, name: str | None = None) -> GitCleanCheck:
    """The work tree at ``repo_dir`` on the controller is clean (``git status --porcelain``
    prints nothing: no modified, staged or untracked file). Runs once, from the controller."""
    return GitCleanCheck(repo_dir, name=name)


# -- disk and memory --------------------------------------------------------------------------


class ResourcesCheck(Check):
    """Free disk space and available memory are above thresholds. See :func:`resources`."""

    kind: ClassVar[str] = "resources"

    def __init__(self, paths: Sequence[str] = ("/",), *, min_free_mb: int = 1024,
                 min_free_percent: float | None = None, min_memory_mb: int | None = 256,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.paths = tuple(paths)
        if not self.paths or any(not p.startswith("/") for p in self.paths):
            raise ConfigError(f"resources: paths must be absolute, not {paths!r}")
        if min_free_mb < 0 or (min_free_percent is not None
                               and not 0 <= min_free_percent <= 100):
            raise ConfigError("resources: min_free_mb >= 0 and 0 <= min_free_percent <= 100")
        self.min_free_mb = min_free_mb
        self.min_free_percent = min_free_percent
        self.min_memory_mb = min_memory_mb

    def target(self) -> str:
        return ",".join(self.paths)

    def probe_script(self) -> str:
        lines = [
            f"df -k --output=size,avail -- {quote(p)} 2>/dev/null | awk -v i={i} "
            "'NR == 2 {print \"disk\", i, $1, $2} END {if (NR < 2) print \"disk\", i, \"missing\"}'"
            for i, p in enumerate(self.paths)]
        lines.append("awk '/^(MemTotal|MemAvailable):/ {print \"mem\", $1, $2}' /proc/meminfo "
                     "2>/dev/null")
        return "\n".join(lines)

    def parse(self, output: str) -> Facts:
        disks: dict[str, dict[str, int] | None] = {p: None for p in self.paths}
        for line in _tagged(output, "disk"):
            index, *rest = line.split()
            try:
                path = self.paths[int(index)]
                disks[path] = ({"size_kib": int(rest[0]), "free_kib": int(rest[1])}
                               if rest != ["missing"] else None)
            except (ValueError, IndexError):
                raise TaskError(f"unexpected df output: {line!r}") from None
        memory = {k.rstrip(":"): int(v) for k, v in
                  (line.split()[:2] for line in _tagged(output, "mem"))}
        return {"disks": disks, "memory_kib": memory}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        problems: list[str] = []
        info: list[str] = []
        data: dict[str, Any] = {"disk": {}}
        for path in self.paths:
            disk = facts["disks"].get(path)
            if disk is None:
                problems.append(f"disk: {path} does not exist (df failed)")
                continue
            free, size = disk["free_kib"], disk["size_kib"]
            percent = 100.0 * free / size if size else 0.0
            data["disk"][path] = {"free_mb": free // 1024, "size_mb": size // 1024,
                                  "free_percent": round(percent, 1)}
            need = []
            if free < self.min_free_mb * 1024:
                need.append(f"at least {humanize.size(self.min_free_mb * 1048576)}")
            if self.min_free_percent is not None and percent < self.min_free_percent:
                need.append(f"at least {self.min_free_percent:g}%")
            text = (f"{path} has {humanize.size(free * 1024)} free ({percent:.1f}% of "
                    f"{humanize.size(size * 1024)})")
            if need:
                problems.append(f"disk: {text}, needs {' and '.join(need)}")
            else:
                info.append(f"disk {text}")
        if self.min_memory_mb is not None:
            available = facts["memory_kib"].get("MemAvailable")
            if available is None:
                problems.append("memory: /proc/meminfo has no MemAvailable")
            else:
                data["memory_available_mb"] = available // 1024
                if available < self.min_memory_mb * 1024:
                    problems.append(f"memory: {humanize.size(available * 1024)} available, "
                                    "needs at least "
                                    f"{humanize.size(self.min_memory_mb * 1048576)}")
                else:
                    info.append(f"memory {humanize.size(available * 1024)} available")
        return Verdict(problems, "; ".join(info), data)


def resources(paths: Sequence[str] = ("/",), *, min_free_mb: int = 1024,
              min_free_percent: float | None = None, min_memory_mb: int | None = 256,
              name: str | None = None) -> ResourcesCheck:
    """Enough free disk under each of ``paths`` and enough available memory on each host.

    Fails when a path has less than ``min_free_mb`` MiB free (or, when given,
    less than ``min_free_percent`` % of its filesystem), or when
    ``MemAvailable`` is below ``min_memory_mb`` (None: no memory test). One
    round trip: ``df`` and ``/proc/meminfo``.
    """
    return ResourcesCheck(paths, min_free_mb=min_free_mb, min_free_percent=min_free_percent,
                          min_memory_mb=min_memory_mb, name=name)


# -- ports ------------------------------------------------------------------------------------


def _check_ports(kind: str, ports: Iterable[int]) -> tuple[int, ...]:
    out = tuple(dict.fromkeys(ports))
    for p in out:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise ConfigError(f"{kind}: {p!r} is not a TCP port (1-65535)")
    return out


class PortsCheck(Check):
    """Ports that must listen do, ports that must be free are. See :func:`ports`."""

    kind: ClassVar[str] = "ports"

    def __init__(self, *, listening: Iterable[int] = (), free: Iterable[int] = (),
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.listening = _check_ports("ports", listening)
        self.free = _check_ports("ports", free)
        if not self.listening and not self.free:
            raise ConfigError("ports: give listening= and/or free= ports")
        both = set(self.listening) & set(self.free)
        if both:
            raise ConfigError(f"ports: {sorted(both)} cannot be both listening and free")

    def target(self) -> str:
        parts = []
        if self.listening:
            parts.append("listening " + ",".join(map(str, self.listening)))
        if self.free:
            parts.append("free " + ",".join(map(str, self.free)))
        return "; ".join(parts)

    def probe_script(self) -> str:
        return ("if command -v ss >/dev/null 2>&1; then ss -Htln 2>/dev/null | "
                "awk '{print \"listen\", $4}'; else echo noss; fi")

    def parse(self, output: str) -> Facts:
        if "noss" in output.splitlines():
            return {"ss": False, "ports": []}
        found = set()
        for address in _tagged(output, "listen"):
            port = address.rpartition(":")[2]
            if port.isdigit():
                found.add(int(port))
        return {"ss": True, "ports": sorted(found)}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        if not facts["ss"]:
            return Verdict(["ports: ss (iproute2) is not installed on the host"])
        open_ports = set(facts["ports"])
        silent = [p for p in self.listening if p not in open_ports]
        taken = [p for p in self.free if p in open_ports]
        problems = []
        if silent:
            problems.append(f"nothing listens on TCP port(s) {_listing([str(p) for p in silent])}"
                            f" (must be listening)")
        if taken:
            problems.append(f"TCP port(s) {_listing([str(p) for p in taken])} already in use "
                            f"(must be free)")
        info = []
        if self.listening:
            info.append(f"listening: {','.join(map(str, self.listening))}")
        if self.free:
            info.append(f"free: {','.join(map(str, self.free))}")
        return Verdict(problems, "; ".join(info), {"listening": sorted(open_ports)})


def ports(*, listening: Iterable[int] = (), free: Iterable[int] = (),
          name: str | None = None) -> PortsCheck:
    """TCP ports on each host: each of ``listening`` has a listener, each of ``free``
    has none (e.g. the port the new release will bind). One ``ss -Htln``."""
    return PortsCheck(listening=listening, free=free, name=name)


# -- secrets in a .env file -------------------------------------------------------------------

# Parses KEY=value lines (optional "export ", quotes, comments) and prints, per required key,
# "key NAME <reason>" and nothing else: the values never leave the host.
_ENV_AWK = r"""
BEGIN {
  n = split(ENVIRON["DK_KEYS"], keys, " ")
  nw = split(ENVIRON["DK_WEAK"], w, "\n")
  for (i = 1; i <= nw; i++) weak[tolower(w[i])] = 1
  min = ENVIRON["DK_MIN"] + 0
}
{
  line = $0
  sub(/\r$/, "", line); sub(/^[ \t]+/, "", line)
  if (line == "" || substr(line, 1, 1) == "#") next
  sub(/^export[ \t]+/, "", line)
  eq = index(line, "="); if (eq == 0) next
  k = substr(line, 1, eq - 1); sub(/[ \t]+$/, "", k)
  v = substr(line, eq + 1); sub(/^[ \t]+/, "", v)
  q = substr(v, 1, 1)
  if ((q == "\"" || q == "'") && length(v) >= 2 && substr(v, length(v), 1) == q) {
    v = substr(v, 2, length(v) - 2)
  } else {
    sub(/[ \t]+#.*$/, "", v); sub(/[ \t]+$/, "", v)
  }
  val[k] = v; seen[k] = 1
}
END {
  for (i = 1; i <= n; i++) {
    k = keys[i]
    if (!(k in seen)) { print "key", k, "missing"; continue }
    v = val[k]
    if (v == "") { print "key", k, "empty"; continue }
    if (tolower(v) in weak) { print "key", k, "default"; continue }
    same = 1
    for (j = 2; j <= length(v); j++) if (substr(v, j, 1) != substr(v, 1, 1)) { same = 0; break }
    if (same && length(v) > 1) { print "key", k, "repeated"; continue }
    if (length(v) < min) { print "key", k, "short"; continue }
    print "key", k, "ok"
  }
}
"""

_ENV_REASONS = {
    "missing": "missing",
    "empty": "empty",
    "default": "a known default value",
    "repeated": "one character repeated",
}


class EnvSecretsCheck(Check):
    """Required secrets are in a ``.env`` file and not weak. See :func:`env_secrets`."""

    kind: ClassVar[str] = "secrets"

    def __init__(self, path: str, keys: Sequence[str], *, min_length: int = 12,
                 weak: Iterable[str] = DEFAULT_WEAK_VALUES, name: str | None = None) -> None:
        super().__init__(name=name)
        if not path.startswith("/"):
            raise ConfigError(f"env_secrets: the path must be absolute, not {path!r}")
        self.path = path
        self.keys = tuple(dict.fromkeys(keys))
        if not self.keys:
            raise ConfigError("env_secrets: give the required keys")
        bad = [k for k in self.keys if not _ENV_KEY.match(k)]
        if bad:
            raise ConfigError(f"env_secrets: invalid variable name {bad[0]!r}")
        if min_length < 1:
            raise ConfigError("env_secrets: min_length must be at least 1")
        self.min_length = min_length
        self.weak = tuple(w for w in weak if w and "\n" not in w)

    def target(self) -> str:
        return self.path

    def probe_script(self) -> str:
        p = quote(self.path)
        env = (f"DK_KEYS={quote(' '.join(self.keys))} DK_MIN={self.min_length} "
               f"DK_WEAK={quote(chr(10).join(self.weak))}")
        return (f"if [ -f {p} ] && [ -r {p} ]; then {env} awk {quote(_ENV_AWK)} {p}; "
                f"elif [ -e {p} ]; then echo unreadable; else echo nofile; fi")

    def parse(self, output: str) -> Facts:
        lines = output.splitlines()
        if "nofile" in lines:
            return {"file": "missing", "keys": {}}
        if "unreadable" in lines:
            return {"file": "unreadable", "keys": {}}
        keys = {}
        for line in _tagged(output, "key"):
            key, _, reason = line.partition(" ")
            keys[key] = reason
        return {"file": "ok", "keys": keys}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        if facts["file"] == "missing":
            return Verdict([f"secrets: {self.path} does not exist"])
        if facts["file"] == "unreadable":
            return Verdict([f"secrets: {self.path} is not a readable file"])
        reasons: dict[str, str] = facts["keys"]
        bad = []
        for key in self.keys:
            reason = reasons.get(key, "not checked")
            if reason == "short":
                bad.append(f"{key} is shorter than {self.min_length} characters")
            elif reason != "ok":
                bad.append(f"{key} is {_ENV_REASONS.get(reason, reason)}")
        data = {"keys": {k: reasons.get(k, "not checked") for k in self.keys}}
        if bad:
            return Verdict([f"secrets in {self.path}: {'; '.join(bad)}"], data=data)
        return Verdict([], f"{len(self.keys)} secret(s) present and not weak in {self.path}",
                       data)


def env_secrets(path: str, keys: Sequence[str], *, min_length: int = 12,
                weak: Iterable[str] = DEFAULT_WEAK_VALUES,
                name: str | None = None) -> EnvSecretsCheck:
    """Each of ``keys`` is set in the ``.env`` file at ``path`` on each host, and not weak.

    Weak: empty, a known default (:data:`DEFAULT_WEAK_VALUES`, any case), one
    character repeated, or shorter than ``min_length``. The file is parsed on
    the host (``KEY=value``, ``export KEY=value``, quotes, comments; the last
    assignment wins) and only key names and reasons come back: the **values
    never leave the host**, so no message, result or log can show one.
    """
    return EnvSecretsCheck(path, keys, min_length=min_length, weak=weak, name=name)


# -- backup -----------------------------------------------------------------------------------


class BackupCheck(Check):
    """A recent backup exists and matches its checksum. See :func:`backup`."""

    kind: ClassVar[str] = "backup"

    def __init__(self, directory: str, *, max_age_hours: float = 24.0,
                 pattern: str = "*.dump", name: str | None = None) -> None:
        super().__init__(name=name)
        if not directory.startswith("/"):
            raise ConfigError(f"backup: the directory must be absolute, not {directory!r}")
        if "/" in pattern or not pattern:
            raise ConfigError(f"backup: pattern is a file name pattern, not {pattern!r}")
        if max_age_hours <= 0:
            raise ConfigError("backup: max_age_hours must be positive")
        self.directory = directory.rstrip("/") or "/"
        self.max_age_hours = max_age_hours
        self.pattern = pattern

    def target(self) -> str:
        return self.directory

    def probe_script(self) -> str:
        d = quote(self.directory)
        return "\n".join([
            f"if [ ! -d {d} ]; then echo nodir; else",
            "echo \"now $(date +%s)\"",
            f"f=$(find {d} -maxdepth 1 -type f -name {quote(self.pattern)} "
            "-printf '%T@ %s %f\\n' 2>/dev/null | sort -n | tail -n 1)",
            'if [ -z "$f" ]; then echo none; else',
            '  echo "newest $f"; name=${f#* }; name=${name#* }',
            f'  p={d}/"$name"',
            '  if [ -f "$p.sha256" ]; then s="$p.sha256"; '
            'elif [ -f "${p%.*}.sha256" ]; then s="${p%.*}.sha256"; else s=; fi',
            '  if [ -n "$s" ]; then',
            '    printf "sidecar %s\\n" "${s##*/}"',
            '    printf "expected %s\\n" "$(head -c 64 -- "$s")"',
            '    printf "actual %s\\n" "$(sha256sum < "$p" | cut -c1-64)"',
            "  fi",
            "fi",
            "fi",
        ])

    def parse(self, output: str) -> Facts:
        lines = output.splitlines()
        if "nodir" in lines:
            return {"dir": False}
        facts: Facts = {"dir": True, "newest": None}
        try:
            facts["now"] = int(_tagged(output, "now")[0])
            newest = _tagged(output, "newest")
            if newest:
                mtime, size, filename = newest[0].split(" ", 2)
                facts["newest"] = {"name": filename, "mtime": float(mtime), "size": int(size)}
        except (IndexError, ValueError):
            raise TaskError(f"unexpected backup probe output: {output.strip()[:200]!r}") from None
        for tag in ("sidecar", "expected", "actual"):
            found = _tagged(output, tag)
            facts[tag] = found[0].strip() if found else None
        return facts

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        where = self.directory
        if not facts["dir"]:
            return Verdict([f"backup: {where} does not exist"])
        newest = facts["newest"]
        if newest is None:
            return Verdict([f"backup: no backup matching {self.pattern} in {where}"])
        name = newest["name"]
        age_hours = max(0.0, (facts["now"] - newest["mtime"]) / 3600)
        data = {"file": f"{where}/{name}", "age_hours": round(age_hours, 2),
                "size": newest["size"], "verified": False}
        problems = []
        if age_hours > self.max_age_hours:
            problems.append(f"backup: newest backup {name} in {where} is "
                            f"{humanize.age(age_hours * 3600)} old (max {self.max_age_hours:g} h)")
        if newest["size"] == 0:
            problems.append(f"backup: {where}/{name} is empty")
        if facts["sidecar"] is None:
            problems.append(f"backup: {where}/{name} has no checksum sidecar ({name}.sha256)")
        elif not re.fullmatch(r"[0-9a-fA-F]{64}", facts["expected"] or ""):
            problems.append(f"backup: checksum sidecar {where}/{facts['sidecar']} holds no "
                            f"SHA-256")
        elif facts["expected"].lower() != facts["actual"]:
            problems.append(f"backup: {where}/{name} is corrupt: its SHA-256 does not match "
                            f"{facts['sidecar']}")
        else:
            data["verified"] = True
        return Verdict(problems, f"backup {name} is {humanize.age(age_hours * 3600)} old, "
                                 "checksum verified", data)


def backup(directory: str, *, max_age_hours: float = 24.0, pattern: str = "*.dump",
           name: str | None = None) -> BackupCheck:
    """A verified backup newer than ``max_age_hours`` is in ``directory`` on each host.

    The newest file matching ``pattern`` (by modification time, host clock)
    must be young enough, not empty, and match its checksum sidecar: the
    SHA-256 in ``<file>.sha256`` (or ``<file without extension>.sha256``), in
    ``sha256sum`` format or bare hex, recomputed on the host.
    """
    return BackupCheck(directory, max_age_hours=max_age_hours, pattern=pattern, name=name)


# -- reachability and commands ----------------------------------------------------------------


class ReachableCheck(ControllerCheck):
    """A TCP connect from the controller succeeds. See :func:`reachable`."""

    kind: ClassVar[str] = "reachable"

    def __init__(self, port: int, *, address: str | None = None, timeout: float = 3.0,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        (self.port,) = _check_ports("reachable", [port])
        self.address = address
        self.timeout = timeout

    @property
    def per_host(self) -> bool:
        """Per host when no address is given (each target host's own address)."""
        return self.address is None

    def target(self) -> str:
        return f"{self.address or ''}:{self.port}"

    def gather(self, host: Host | None) -> Facts:
        address = self.address or (host.address if host else None)
        if address is None:
            return {"address": None, "port": self.port, "error": "no address to connect to"}
        started = time.monotonic()
        try:
            with socket.create_connection((address, self.port), timeout=self.timeout):
                pass
            error = ""
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except OSError as exc:
            error = exc.strerror or type(exc).__name__
        return {"address": address, "port": self.port, "error": error,
                "seconds": round(time.monotonic() - started, 3)}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        where = f"{facts['address']}:{facts['port']}"
        if facts["error"]:
            return Verdict([f"{where} is not reachable from the controller: {facts['error']}"])
        return Verdict([], f"{where} reachable ({facts['seconds'] * 1000:.0f} ms)")


def reachable(port: int, *, address: str | None = None, timeout: float = 3.0,
              name: str | None = None) -> ReachableCheck:
    """A TCP connect from the controller to ``address:port`` succeeds within ``timeout``.

    Without ``address``, each target host's inventory address is tried (once
    per host); with one, the check runs once per deploy.
    """
    return ReachableCheck(port, address=address, timeout=timeout, name=name)


class CommandCheck(Check):
    """A read-only command exits 0 on the host. See :func:`command`."""

    kind: ClassVar[str] = "command"

    def __init__(self, cmd: str | Sequence[str], *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.cmd = cmd if isinstance(cmd, str) else " ".join(quote(a) for a in cmd)
        if not self.cmd.strip():
            raise ConfigError("command: the command is empty")

    def target(self) -> str:
        line = self.cmd.strip().splitlines()[0]
        return line if len(line) <= 60 else line[:60] + "..."

    def probe_script(self) -> str:
        return (f"out=$(sh -c {quote(self.cmd)} 2>&1 </dev/null); rc=$?; echo \"rc $rc\"; "
                "printf 'out '; printf '%s' \"$out\" | tail -c 500 | base64 -w0; echo")

    def parse(self, output: str) -> Facts:
        try:
            rc = int(_tagged(output, "rc")[0])
            out = base64.b64decode(_tagged(output, "out")[0] or "", validate=True)
        except (IndexError, ValueError, binascii.Error):
            raise TaskError(f"unexpected command probe output: {output.strip()[:200]!r}") from None
        return {"rc": rc, "output": out.decode("utf-8", "replace").strip()}

    def evaluate(self, host: Host | None, facts: Facts) -> Verdict:
        if facts["rc"] != 0:
            detail = facts["output"].splitlines()[-1:] if facts["output"] else []
            return Verdict([f"`{self.target()}` exited with code {facts['rc']}"
                            + (f": {detail[0][:200]}" if detail else "")],
                           data={"exit_code": facts["rc"]})
        return Verdict([], f"`{self.target()}` succeeded", {"exit_code": 0})


def command(cmd: str | Sequence[str], *, name: str | None = None) -> CommandCheck:
    """A command exits 0 on each host (``pg_isready -q``, ``redis-cli ping``).

    It runs inside the read-only probe, so it **must not change anything**; its
    output's last line is shown when it fails. Give secrets to such commands
    through files on the host, never in the command (commands are logged).
    """
    return CommandCheck(cmd, name=name)


# -- pre-flight -------------------------------------------------------------------------------


@dataclass
class PreflightReport:
    """Every check's result: one per host for host checks, one ``(controller)`` result
    for controller-wide checks; status ``ok``, ``failed`` or ``skipped``."""

    results: list[Result]
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not fail a pre-flight)."""
        return not self.failed

    @property
    def failed(self) -> list[Result]:
        """The failed checks."""
        return [r for r in self.results if r.failed]

    @property
    def skipped(self) -> list[Result]:
        """The checks skipped on request."""
        return [r for r in self.results if r.skipped]

    def summary(self) -> str:
        """``pre-flight: 7 ok, 1 failed, 1 skipped``."""
        counts = {s: sum(1 for r in self.results if r.status is s)
                  for s in (Status.OK, Status.FAILED, Status.SKIPPED)}
        return "pre-flight: " + ", ".join(f"{n} {s.value}" for s, n in counts.items())

    def render(self) -> str:
        """One line per check and host, then the summary."""
        width = max((len(r.host) for r in self.results), default=0)
        lines = [f"{r.status.value:<8} {r.host:<{width}}  {r.task}: {r.message}"
                 for r in self.results]
        return "\n".join([*lines, self.summary()])

    def raise_for_failures(self) -> None:
        """Raise :class:`PreflightError` listing every failed check, if any failed."""
        if self.failed:
            raise PreflightError(
                f"{len(self.failed)} pre-flight check(s) failed: " + "; ".join(
                    f"[{r.host}] {r.task}: {r.message}" for r in self.failed))

    def to_dict(self) -> dict[str, Any]:
        """JSON data: ok, duration, every result."""
        return {"ok": self.ok, "duration": self.duration,
                "results": [r.to_dict() for r in self.results]}


def _skip_set(checks: Sequence[Check], skip: Iterable[str]) -> set[str]:
    wanted = set(skip)
    known = {c.name for c in checks} | {c.kind for c in checks}
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"cannot skip unknown check(s) {', '.join(map(repr, unknown))}; "
                          f"checks: {', '.join(sorted(known))}")
    names = [c.name for c in checks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two checks share the name(s) {', '.join(duplicates)}: give them "
                          f"distinct name= values")
    return wanted


def run_preflight(
    targets: Sequence[Connection | Host],
    checks: Sequence[Check],
    *,
    skip: Iterable[str] = (),
    forks: int = 10,
    connect_timeout: float = 10.0,
) -> PreflightReport:
    """Run every check, on every target host and once on the controller; never raises
    for a failing check (see :meth:`PreflightReport.raise_for_failures`).

    ``targets`` are open (or openable) connections, or inventory hosts (then
    connected here, in parallel, and closed at the end). Host checks are
    probed in **one** round trip per host; hosts run in a pool of ``forks``;
    controller-wide checks run alongside. ``skip`` names checks by name
    (``"backup /var/backups/shop"``) or kind (``"backup"``): each skipped check
    is recorded as ``skipped`` with the reason. An unknown skip name is a
    :class:`ConfigError` (a typo must not silently skip nothing). A host that
    cannot be reached fails each of its SSH checks with the reason.
    """
    started = time.monotonic()
    skipped_names = _skip_set(checks, skip)
    order = {id(c): i for i, c in enumerate(checks)}
    conns = [t if isinstance(t, Connection) else Connection(t, connect_timeout=connect_timeout)
             for t in targets]
    owned = [c for t, c in zip(targets, conns, strict=True) if not isinstance(t, Connection)]

    def is_skipped(c: Check) -> bool:
        return c.name in skipped_names or c.kind in skipped_names

    def skipped_result(c: Check, host: str) -> Result:
        return Result(host=host, task=c.name, status=Status.SKIPPED,
                      message="skipped on request (skip list)")

    once = [c for c in checks if not c.per_host]
    per_host = [c for c in checks if c.per_host]

    def controller_results() -> list[Result]:
        out = []
        for c in once:
            if is_skipped(c):
                out.append(skipped_result(c, CONTROLLER))
            elif isinstance(c, ControllerCheck):
                out.append(c.run_on_controller())
        return out

    def host_results(conn: Connection) -> list[Result]:
        out: list[Result] = []
        todo = [c for c in per_host if not is_skipped(c)]
        out += [skipped_result(c, conn.name) for c in per_host if is_skipped(c)]
        remote = [c for c in todo if c.remote]
        facts: dict[int, Facts] = {}
        unreachable = ""
        if remote:
            try:
                conn.open()
                facts = prefetch(conn, remote)
            except ConnectError as exc:
                unreachable = exc.message
        for c in todo:
            if c.remote and unreachable:
                out.append(Result(host=conn.name, task=c.name, status=Status.FAILED,
                                  message=f"host unreachable: {unreachable}"))
            else:
                index = remote.index(c) if c.remote else -1
                out.append(c.run(conn, facts=facts.get(index)))
        return out

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(conns)) + 1)) as pool:
            on_controller = pool.submit(controller_results)
            per_target = list(pool.map(host_results, conns))
            results = on_controller.result() + [r for rs in per_target for r in rs]
    finally:
        for conn in owned:
            conn.close()
    host_order = {c.name: i for i, c in enumerate(conns)}
    by_name = {c.name: c for c in checks}
    results.sort(key=lambda r: (order[id(by_name[r.task])], host_order.get(r.host, -1)))
    return PreflightReport(results, time.monotonic() - started)
