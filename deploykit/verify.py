"""Run an app's testinfra suite against inventory hosts: ``invoke verify`` and deploy gates.

A suite is a directory (or file) of ordinary pytest-testinfra tests using the
``host`` fixture, plus deploykit's ``deploy_context`` and ``host_vars``
(:mod:`deploykit.testing.plugin`). :func:`run_suite` runs it over hosts in
parallel, bounded: the hosts are split into at most ``forks`` groups, one
``pytest`` process per group (a process costs about a second of CPU to start,
so one per host would not pay on a small controller), each reaching its hosts
over deploykit's own SSH (strict known_hosts). Every test's outcome per host
comes back through the plugin's ``--deploykit-results`` file; every group's
JUnit XML is merged into one file listing every host x test.

Markers choose what runs when: ``@pytest.mark.pre_switch`` tests run against
the idle colour before traffic moves, ``@pytest.mark.post_switch`` tests after
(:func:`suite_task` is the strategies' gate step, one process per host, bounded
by :data:`PROCESSES` across hosts); :func:`verify` / :func:`verify_hosts` (``invoke
verify --suite``) run them all unless given a marker, and write the JUnit XML, the
JSON results and a run report into the run report directory.

::

    result = verify("inventories/lab.yml", "web", "examples/verify",
                    report_dir=".deploykit/runs")
    print(result.summary())   # web-1: 9 passed; web-2: 1 of 9 failed: test_env_file_... (...)
    result.ok, result.junit_path, result.json_path
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import yaml

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.inventory import SETTINGS, Host, Inventory
from deploykit.journal import RUNS_DIR, new_deploy_id
from deploykit.result import Result, RunReport, Status
from deploykit.secrets import Secret, redact
from deploykit.shell import quote
from deploykit.task import Facts, Observation, UndoStack

__all__ = ["MARKERS", "DeployContext", "HostVerification", "SuiteTask", "TestOutcome",
           "Verification", "context_from_host", "run_suite", "suite_task", "verify",
           "verify_hosts"]

MARKERS = ("pre_switch", "post_switch")
"""The gate markers: tests run against the idle colour before the switch, and after it."""
PROCESSES = max(2, os.cpu_count() or 2)
"""At most this many suite processes at once, across every caller in this process."""
_processes = threading.BoundedSemaphore(PROCESSES)
_PORT = re.compile(r"(?:^|[=,\s])PORT=[\"']?(\d+)")
_NO_TESTS = 5  # pytest's exit code when nothing was collected (or selected)


# == what the suite verifies =================================================================


@dataclass(frozen=True)
class DeployContext:
    """What a suite verifies: the app, its version/release, the colour and port, the phase.

    The gate passes it to pytest as options (:meth:`options`); a field left out
    is read from the host by the ``deploy_context`` fixture
    (:func:`context_from_host`), or from ``DEPLOYKIT_<FIELD>`` environment
    variables (``DEPLOYKIT_COLOR``...).
    """

    app: str | None = None
    version: str | None = None
    release: str | None = None
    color: str | None = None
    port: int | None = None
    program: str | None = None
    phase: str | None = None

    OPTION: ClassVar[str] = "--deploy-{}"
    ENV: ClassVar[str] = "DEPLOYKIT_{}"

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in MARKERS:
            raise ConfigError(f"deploy phase must be one of {', '.join(MARKERS)}, "
                              f"not {self.phase!r}")
        if self.port is not None and (isinstance(self.port, bool) or not 1 <= int(self.port)
                                      <= 65535):
            raise ConfigError(f"deploy port must be from 1 to 65535, not {self.port!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (each is an option ``--deploy-<name>``)."""
        return tuple(f.name for f in fields(cls))

    def options(self) -> list[str]:
        """The pytest options giving the set fields (``--deploy-color green``...)."""
        argv: list[str] = []
        for name, value in asdict(self).items():
            if value is not None:
                argv += [self.OPTION.format(name), str(value)]
        return argv

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> DeployContext:
        """From option values, then ``DEPLOYKIT_<FIELD>`` environment variables."""
        got: dict[str, Any] = {}
        for name in cls.names():
            value = values.get(name)
            if value is None:
                value = os.environ.get(cls.ENV.format(name.upper())) or None
            got[name] = value
        if got["port"] is not None:
            try:
                got["port"] = int(str(got["port"]))
            except ValueError:
                raise ConfigError(f"deploy port must be a number, not {got['port']!r}") from None
        return cls(**got)

    def missing(self) -> list[str]:
        """The fields not set."""
        return [k for k, v in asdict(self).items() if v is None and k != "phase"]


_CONTEXT_SCRIPT = (
    "for f in /etc/nginx/deploykit/*.active; do [ -f \"$f\" ] && "
    "printf 'marker %s %s\\n' \"$(basename \"$f\" .active)\" \"$(head -n1 \"$f\")\"; done; "
    "for d in {root}/*/releases; do [ -d \"$d\" ] && d=${{d%/releases}} && "
    "printf 'app %s\\n' \"${{d##*/}}\"; done; :"
)


def context_from_host(conn: Connection, given: DeployContext, *,
                      root: str = "/srv") -> DeployContext:
    """``given`` with what it leaves out read from the host (a few read-only commands).

    * ``app``: the only app with a colour marker (``/etc/nginx/deploykit/<app>.active``),
      else the only ``<root>/<app>/releases``;
    * ``color``: the app's marker (none for a single-colour app);
    * ``release``: the target of the colour's link (``<root>/<app>/<color>``), else of
      ``current``; ``version``: that release's recorded version;
    * ``program``: ``<app>-<color>`` (``<app>`` without a colour); ``port``: ``PORT`` in
      the program's supervisor config, else the host var ``app_port``.
    """
    from deploykit.tasks import releases, services  # only when reading the host

    ctx = given
    if not ctx.missing():
        return ctx
    out = conn.run(_CONTEXT_SCRIPT.format(root=quote(root)), write=False, check=False).stdout
    markers: dict[str, str] = {}
    apps: list[str] = []
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "marker" and " " in rest:
            name, marked = rest.split(" ", 1)
            markers[name] = marked.strip()
        elif kind == "app":
            apps.append(rest.strip())
    app = ctx.app or (next(iter(markers)) if len(markers) == 1 else
                      apps[0] if len(apps) == 1 else None)
    if app is None:
        raise ConfigError("deploy_context: cannot tell which app to verify (apps on the host: "
                          f"{', '.join(sorted(set(apps) | set(markers))) or 'none'}); pass "
                          "--deploy-app", host=conn.name)
    color = ctx.color or markers.get(app)
    infos = releases.list_releases(conn, app, root=root)
    link = color if color and any(color in i.links for i in infos) else "current"
    live = next((i for i in infos if link in i.links), None)
    release = ctx.release or (live.release_id if live else None)
    version = ctx.version
    if version is None and release is not None:
        version = next((i.version for i in infos if i.release_id == release), None)
    program = ctx.program or (f"{app}-{color}" if color else app)
    port = ctx.port
    if port is None:
        conf = services.Supervisor.conf_dir + f"/{program}.conf"
        text = conn.run(["cat", "--", conf], write=False, check=False).stdout
        found = [m.group(1) for line in text.splitlines() if line.startswith("environment")
                 for m in [_PORT.search(line)] if m]
        if found:
            port = int(found[0])
        elif conn.host.vars.get("app_port") is not None:
            port = int(conn.host.vars["app_port"])
    return replace(ctx, app=app, color=color, release=release, version=version,
                   program=program, port=port)


# == results ==================================================================================


@dataclass
class TestOutcome:
    """One test on one host: ``passed``, ``failed``, ``skipped`` or ``error`` (setup)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    host: str
    name: str
    nodeid: str
    outcome: str
    duration: float = 0.0
    message: str = ""
    markers: list[str] = field(default_factory=list)


@dataclass
class HostVerification:
    """One host's tests; ``error`` when the suite could not run for it at all."""

    host: str
    tests: list[TestOutcome] = field(default_factory=list)
    error: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Tests per outcome."""
        counts = dict.fromkeys(("passed", "failed", "skipped", "error"), 0)
        for t in self.tests:
            counts[t.outcome] = counts.get(t.outcome, 0) + 1
        return counts

    @property
    def failed_tests(self) -> list[TestOutcome]:
        """The tests that failed or errored."""
        return [t for t in self.tests if t.outcome in ("failed", "error")]

    @property
    def ok(self) -> bool:
        """True when the suite ran and nothing failed."""
        return not self.error and not self.failed_tests

    def summary(self) -> str:
        """``9 passed, 1 skipped`` or ``1 of 9 failed: test_env_file (assert 420 == 384)``."""
        if self.error:
            return f"suite did not run: {self.error}"
        counts = self.counts
        if not self.tests:
            return "no tests selected"
        if self.ok:
            return ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        bad = self.failed_tests
        shown = "; ".join(f"{t.name} ({t.message})" if t.message else t.name for t in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        return f"{len(bad)} of {len(self.tests)} failed: {shown}{more}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for reports)."""
        return {"host": self.host, "ok": self.ok, "error": self.error, "counts": self.counts,
                "tests": [asdict(t) for t in self.tests]}


@dataclass
class Verification:
    """A suite's run over hosts: per host, every test's outcome; the JUnit XML and JSON."""

    suite: str
    marker: str | None
    hosts: dict[str, HostVerification] = field(default_factory=dict)
    duration: float = 0.0
    junit_suites: list[str] = field(default_factory=list, repr=False)
    junit_path: Path | None = None
    json_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every host passed."""
        return all(h.ok for h in self.hosts.values())

    @property
    def failed_hosts(self) -> list[str]:
        """Hosts with a failed test or no run at all."""
        return [name for name, h in self.hosts.items() if not h.ok]

    def summary(self) -> str:
        """One line: each host and its counts (failed tests named)."""
        return "; ".join(f"{name}: {h.summary()}" for name, h in self.hosts.items())

    def merge(self, other: Verification) -> None:
        """Add another run's hosts and JUnit suites (the gate merges its hosts' runs)."""
        self.hosts.update(other.hosts)
        self.junit_suites += other.junit_suites
        self.duration = max(self.duration, other.duration)

    def junit_xml(self) -> str:
        """Every group's ``<testsuite>`` under one ``<testsuites>`` (every host x test)."""
        root = ET.Element("testsuites", name=f"deploykit verify {self.suite}")
        totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
        for text in self.junit_suites:
            parsed = ET.fromstring(text)
            for suite in ([parsed] if parsed.tag == "testsuite" else parsed.iter("testsuite")):
                root.append(suite)
                for key in totals:
                    totals[key] += int(suite.get(key, "0"))
        for key, value in totals.items():
            root.set(key, str(value))
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """Plain data: the suite, marker, whether it passed, and every host's tests."""
        return {"suite": self.suite, "marker": self.marker, "ok": self.ok,
                "duration": round(self.duration, 3),
                "junit": str(self.junit_path) if self.junit_path else None,
                "hosts": {name: h.as_dict() for name, h in self.hosts.items()}}

    def write(self, junit_path: str | os.PathLike[str],
              json_path: str | os.PathLike[str] | None = None, *,
              secrets: Iterable[Secret] = ()) -> None:
        """Write the merged JUnit XML (and the JSON results), 0600, creating directories;
        ``secrets`` are redacted (a test may have printed one)."""
        hidden = list(secrets)
        self.junit_path = Path(junit_path)
        _write_private(self.junit_path, redact(self.junit_xml(), hidden))
        if json_path is not None:
            self.json_path = Path(json_path)
            _write_private(self.json_path,
                           redact(json.dumps(self.as_dict(), indent=2), hidden) + "\n")

    def table(self) -> Any:
        """A rich Table: per host, passed/failed/skipped counts and the failed tests."""
        from rich.table import Table  # only the front end draws tables

        title = f"verify {self.suite}" + (f" (-m {self.marker})" if self.marker else "")
        table = Table(title=title, title_justify="left")
        for column in ("host", "result", "passed", "failed", "skipped", "failed tests"):
            table.add_column(column)
        for name, h in self.hosts.items():
            counts = h.counts
            failed = h.error or ", ".join(t.name for t in h.failed_tests) or "-"
            table.add_row(name, "[green]ok[/]" if h.ok else "[bold red]FAILED[/]",
                          str(counts["passed"]), str(counts["failed"] + counts["error"]),
                          str(counts["skipped"]), failed)
        return table


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# == running a suite ==========================================================================


def inventory_data(hosts: Sequence[Host]) -> dict[str, Any]:
    """The hosts as an inventory mapping (settings, merged vars, flat group membership),
    for the suite processes. A host password is written as is: keep the file private."""
    entries: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for host in hosts:
        entry: dict[str, Any] = {}
        for key in SETTINGS:
            value = getattr(host, key)
            if value is not None:
                entry[key] = value.reveal() if key == "password" else value
        entry["vars"] = dict(host.vars)
        entries[host.name] = entry
        for group in host.groups:
            if group != "all":
                groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = {}
    return {"all": {"hosts": entries, "children": groups}}


def _chunks(hosts: Sequence[Host], count: int) -> list[list[Host]]:
    """``hosts`` dealt round-robin into ``count`` non-empty groups."""
    groups: list[list[Host]] = [[] for _ in range(max(1, min(count, len(hosts))))]
    for index, host in enumerate(hosts):
        groups[index % len(groups)].append(host)
    return groups


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def _run_group(hosts: Sequence[Host], suite: Path, inventory: Path, work: Path, index: int,
               marker: str | None, context: DeployContext, timeout: float,
               name: str, secrets: Sequence[Secret] = ()) -> Verification:
    """One pytest process over ``hosts``; its outcome per host, ``secrets`` (and any long
    piece of one) redacted from every message and the JUnit XML as they are read."""
    names = [h.name for h in hosts]
    junit, results = work / f"junit-{index}.xml", work / f"results-{index}.json"
    argv = [sys.executable, "-m", "pytest", str(suite), "--inventory", str(inventory),
            "--hosts", ",".join(names), "-p", "no:cacheprovider", "-q", "--no-header",
            "-o", f"junit_suite_name={name} {','.join(names)}", "--junitxml", str(junit),
            "--deploykit-results", str(results), *context.options()]
    if marker:
        argv += ["-m", marker]
    out = Verification(str(suite), marker, {n: HostVerification(n) for n in names})
    started = time.monotonic()
    try:
        with _processes:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        for h in out.hosts.values():
            h.error = f"the suite took more than {timeout:g} s"
        return out
    out.duration = time.monotonic() - started
    if junit.exists():
        out.junit_suites.append(redact(junit.read_text(encoding="utf-8"), secrets))
    if results.exists():
        for item in json.loads(results.read_text(encoding="utf-8")):
            host = item.get("host")
            if host in out.hosts:
                item["message"] = redact(str(item.get("message") or ""), secrets)
                out.hosts[host].tests.append(TestOutcome(**item))
    if proc.returncode not in (0, 1, _NO_TESTS) or (
            proc.returncode == 1 and not any(h.failed_tests for h in out.hosts.values())):
        why = redact(_tail(proc.stderr) or _tail(proc.stdout)
                     or f"exit code {proc.returncode}", secrets)
        for h in out.hosts.values():
            h.error = f"pytest exited with {proc.returncode}: {why}"
    return out


def run_suite(hosts: Sequence[Host], suite: str | os.PathLike[str], *,
              marker: str | None = None, context: DeployContext | None = None,
              forks: int = PROCESSES, timeout: float = 600.0,
              name: str = "verify", secrets: Iterable[Secret] = ()) -> Verification:
    """Run the testinfra ``suite`` against ``hosts``, at most ``forks`` pytest processes.

    ``secrets`` (plus the hosts' passwords), and any long piece of one (pytest prints
    truncated reprs), are redacted from every outcome and the JUnit XML as they are
    read: nothing derived from the run (report, table, summary, files) holds them.

    ``marker`` is a pytest ``-m`` expression (``pre_switch``); ``context`` what the
    ``deploy_context`` fixture gives (unset fields are read from each host).
    Never raises for a failing test or host: the :class:`Verification` says, per host.
    Raises :class:`ConfigError` for a suite that does not exist or no hosts.
    """
    path = Path(suite)
    if not path.exists():
        raise ConfigError(f"verify suite {os.fspath(suite)!r} not found")
    if not hosts:
        raise ConfigError("verify: no hosts selected")
    if forks < 1:
        raise ConfigError(f"verify: forks must be at least 1, not {forks}")
    started = time.monotonic()
    result = Verification(str(suite), marker)
    hidden = [*secrets, *(h.password for h in hosts if h.password is not None)]
    with tempfile.TemporaryDirectory(prefix="deploykit-verify-") as tmp:
        work = Path(tmp)  # 0700: the inventory may hold a host password
        inventory = work / "inventory.yml"
        fd = os.open(inventory, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(inventory_data(hosts), f, sort_keys=False)
        groups = _chunks(hosts, forks)
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            parts = list(pool.map(
                lambda item: _run_group(item[1], path.resolve(), inventory, work, item[0],
                                        marker, context or DeployContext(), timeout, name,
                                        hidden),
                enumerate(groups)))
    for part in parts:
        result.merge(part)
    result.hosts = {h.name: result.hosts[h.name] for h in hosts}  # inventory order
    result.duration = time.monotonic() - started
    return result


def verify(inventory: Inventory | str | os.PathLike[str], selector: str,
           suite: str | os.PathLike[str], **options: Any) -> Verification:
    """:func:`verify_hosts` over the hosts ``selector`` picks in ``inventory`` (an
    Inventory or its file)."""
    inv = inventory if isinstance(inventory, Inventory) else Inventory.load(inventory)
    return verify_hosts(inv.select(selector), suite, **options)


def verify_hosts(hosts: Sequence[Host], suite: str | os.PathLike[str], *,
                 marker: str | None = None, context: DeployContext | None = None,
                 report_dir: str | os.PathLike[str] = RUNS_DIR, run_id: str | None = None,
                 forks: int = PROCESSES, timeout: float = 600.0,
                 secrets: Iterable[Secret] = ()) -> Verification:
    """``invoke verify --suite``: the suite over ``hosts``, in parallel (bounded).

    Writes ``<report_dir>/<run_id>.junit.xml`` (every host x test), the results as
    ``<run_id>.verify.json`` and the run report ``<run_id>.json`` (one ``verify suite``
    result per host). Check :attr:`Verification.ok` (the front end exits non-zero
    when it is false); print :meth:`Verification.table`.
    """
    run_id = run_id or f"verify-{new_deploy_id()}"
    hidden = [*secrets, *(h.password for h in hosts if h.password is not None)]
    result = run_suite(hosts, suite, marker=marker, context=context, forks=forks,
                       timeout=timeout, name=run_id, secrets=hidden)
    base = Path(report_dir)
    secrets = hidden
    result.write(base / f"{run_id}.junit.xml", base / f"{run_id}.verify.json",
                 secrets=secrets)
    report = RunReport(run_id=run_id, secrets=secrets)
    for name, h in result.hosts.items():
        report.add(Result(name, f"verify suite {suite}", Status.OK if h.ok else Status.FAILED,
                          message=h.summary(), data={**h.as_dict(),
                                                     "junit": str(result.junit_path)}))
    report.finish()
    report.write_json(base / f"{run_id}.json")
    return result


# == the gate step ============================================================================


class SuiteTask(Observation):
    """A runner step running a suite against its host (see :func:`suite_task`)."""

    kind = "verify.suite"

    def __init__(self, suite: str | os.PathLike[str], *, marker: str | None,
                 context: DeployContext, timeout: float, name: str | None,
                 secrets: Iterable[Secret] = ()) -> None:
        super().__init__(name=name)
        self._secrets = list(secrets)
        self.suite = os.fspath(suite)
        self.marker = marker
        self.context = context
        self.timeout = timeout
        self.runs: dict[str, Verification] = {}
        self._lock = threading.Lock()

    def target(self) -> str:
        return self.suite + (f" -m {self.marker}" if self.marker else "")

    @property
    def secrets(self) -> Sequence[Secret]:
        """The secrets given to :func:`suite_task`, redacted from every output."""
        return self._secrets

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """``ok`` when every selected test passed on the host, else ``failed`` naming them;
        ``data`` holds every test's outcome. Skipped in check mode."""
        started = time.monotonic()
        result = Result(conn.name, self.name, Status.OK, check=check)
        if check:
            result.status, result.message = Status.SKIPPED, "not run in check mode"
            return result
        try:
            run = run_suite([conn.host], self.suite, marker=self.marker, context=self.context,
                            forks=1, timeout=self.timeout, name=self.name,
                            secrets=[*self._secrets, *conn.secrets])
        except DeployError as exc:
            result.status, result.message = Status.FAILED, exc.message
        else:
            with self._lock:
                self.runs[conn.name] = run
            entry = run.hosts[conn.name]
            result.status = Status.OK if entry.ok else Status.FAILED
            result.message = entry.summary()
            result.data = entry.as_dict()
        result.duration = time.monotonic() - started
        return result

    def combined(self) -> Verification | None:
        """Every host's run merged (None when it ran nowhere)."""
        with self._lock:
            runs = list(self.runs.values())
        if not runs:
            return None
        merged = Verification(self.suite, self.marker)
        for run in runs:
            merged.merge(run)
        return merged


def suite_task(suite: str | os.PathLike[str], *, marker: str | None = None,
               context: DeployContext | None = None, timeout: float = 600.0,
               name: str | None = None, secrets: Iterable[Secret] = ()) -> SuiteTask:
    """A step running ``suite`` (tests selected by ``marker``) against each host it runs on.

    ``failed`` when a selected test fails (the message names them; ``data`` holds
    every outcome), so a runner's undo treats it like a failed health gate.
    Processes are bounded across hosts (:data:`PROCESSES`). ``secrets`` and the
    connection's secrets are redacted from everything the step and its runs hold.
    """
    if marker is not None and not marker.strip():
        raise ConfigError("verify: the marker expression is empty")
    return SuiteTask(suite, marker=marker, context=context or DeployContext(),
                     timeout=timeout, name=name, secrets=secrets)
