"""The fault-injection suite's fleet: the sample app deployed on the lab, and real faults.

Every test deploys through the real pipeline (:func:`deploykit.pipeline.deploy`, or
``invoke deploy`` as a subprocess) against the lab and injects a real fault at a
known point of that deploy. The point is found through the deploy's own output:
:class:`Tripwire` is the :class:`~deploykit.cli.Output` the pipeline prints to,
and the pipeline prints a phase's title in the main thread before any step of the
phase runs, and a step's line in its host's thread after the step and before that
host's next step. A wire fires its fault synchronously, in that thread, so the
fault is in place before the deploy goes on: no sleeps, no races.

Faults go through real mechanisms inside the host's namespaces (:class:`Faults`):
every sshd process of the host killed, the host's network interface taken down,
a service stopped with the lab's own control script, a small tmpfs mounted over a
directory, nginx's config broken. Each is undone in a ``finally`` by the test.

The session's fleet (:class:`Fleet`) keeps one deployment across every module:
a module starts from ``v1`` serving on both web hosts (``Fleet.ensure``), so a
fault that leaves v1 serving costs no redeploy.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testinfra.host
import yaml
from rich.console import Console

from deploykit import journal, pg
from deploykit.cli import Output
from deploykit.connection import Connection
from deploykit.errors import DeployError
from deploykit.inventory import Inventory
from deploykit.pipeline import DeployOptions, DeploySummary, Project
from deploykit.pipeline import deploy as pipeline_deploy
from deploykit.result import RunReport
from deploykit.tasks import http
from deploykit.testing.lab import Lab
from deploykit.testing.sample import drop_databases, write_config

APP = "sampleapp"
WEB = ("web-1", "web-2")
HOSTS = (*WEB, "db-1")
SUPERVISOR_CONF = "/etc/supervisor/supervisord.conf"
# a release whose migrations 0002 and 0003 apply and 0004 fails halfway (after its first
# statement ran): the source tree of the faults suite is examples/app plus this version
BAD_MIGRATIONS = {
    "0003_create_item_tags.up.sql":
        "CREATE TABLE item_tags (item_id int REFERENCES items (id), tag text NOT NULL);\n",
    "0003_create_item_tags.down.sql": "DROP TABLE item_tags;\n",
    "0004_add_weight.up.sql":
        "-- creates a table, then fails on a typo: the table must not survive\n"
        "CREATE TABLE item_weights (item_id int, grams int);\n"
        "ALTER TABLE items ADD COLUMN weight numeric CHEK (weight > 0);\n",
}
BAD_MIGRATIONS_VERSION = ('description = "tags and weights (0004 has a typo)"\n'
                          "migrations = 4\nfeatures = []\n")


# -- wires in the deploy's output ----------------------------------------------------------


@dataclass
class _Wire:
    pattern: re.Pattern[str]
    action: Callable[[], None]
    fired: bool = False


class Tripwire(Output):
    """The pipeline's output, captured; ``on(pattern, fault)`` runs ``fault`` once, in the
    thread printing the first line matching ``pattern``, before that thread goes on."""

    def __init__(self) -> None:
        super().__init__(console=Console(file=io.StringIO(), width=200, soft_wrap=True))
        self.wires: list[_Wire] = []
        self.lines: list[str] = []
        self._guard = threading.Lock()

    def on(self, pattern: str, action: Callable[[], None]) -> Tripwire:
        """Fire ``action`` at the first line matching ``pattern`` (a regex)."""
        self.wires.append(_Wire(re.compile(pattern), action))
        return self

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print (into the capture), then fire the wires the line trips."""
        super().line(text, style)
        with self._guard:
            self.lines.append(text)
            due = [w for w in self.wires if not w.fired and w.pattern.search(text)]
            for wire in due:
                wire.fired = True
        for wire in due:
            wire.action()

    @property
    def text(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def assert_fired(self) -> None:
        """Every wire fired (a fault that never happened proves nothing)."""
        missed = [w.pattern.pattern for w in self.wires if not w.fired]
        assert not missed, f"faults never injected (no line matched {missed}):\n{self.text}"


def step_line(host: str, step: str, status: str = r"\w+") -> str:
    """A regex for the pipeline's line of a finished step on a host (``host``, ``step``
    and ``status`` are regexes)."""
    return rf"^\s+{host}\s+{status}\s+{step}"


def phase_line(title: str) -> str:
    """A regex for the title line of a phase (printed before any of its steps)."""
    return rf"^-- {title}"


class StepWire:
    """A :class:`~deploykit.report.Reporter` for the strategies' Python API:
    ``before(host, pattern, fault)`` runs ``fault`` once, in the host's thread, when the
    host is about to start the first step whose name matches ``pattern``."""

    def __init__(self) -> None:
        self.wires: list[tuple[str, re.Pattern[str], Callable[[], None]]] = []
        self.fired: list[str] = []
        self._guard = threading.Lock()

    def before(self, host: str, pattern: str, action: Callable[[], None]) -> StepWire:
        self.wires.append((host, re.compile(pattern), action))
        return self

    def run_started(self, hosts: Any, steps: Any, check: bool) -> None:
        pass

    def step_started(self, host: str, step: str) -> None:
        with self._guard:
            due = [w for w in self.wires if w[0] == host and w[1].search(step)]
            for w in due:
                self.wires.remove(w)
                self.fired.append(f"{host}: {step}")
        for _, _, action in due:
            action()

    def step_finished(self, result: Any) -> None:
        pass

    def host_failed(self, host: str, message: str) -> None:
        pass

    def run_finished(self, report: Any) -> None:
        pass

    def assert_fired(self) -> None:
        assert not self.wires, f"faults never injected: {self.wires}"


# -- real faults ---------------------------------------------------------------------------


# every process of the calling shell's network namespace whose name is $1 (by pid)
_PIDS_IN_NETNS = (
    'me=$(readlink /proc/self/ns/net); for p in /proc/[0-9]*; do '
    '[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] || continue; '
    '[ "$(cat "$p/comm" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"; done; true'
)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _wait_gone(pids: list[int], limit: float = 10.0) -> None:
    """Until every pid has exited (a SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + limit
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} still run"
        time.sleep(0.01)


class Faults:
    """Real faults on lab hosts, each with its repair."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def pids(self, host: str, comm: str) -> list[int]:
        """PIDs of the host's processes named ``comm`` (its network namespace only)."""
        out = self.lab.nsenter(host, ["sh", "-c", _PIDS_IN_NETNS, "pids", comm]).stdout
        return [int(p) for p in out.split()]

    def kill_sshd(self, host: str) -> None:
        """SIGKILL every sshd of the host: the listener and every session (connections
        drop, new ones are refused)."""
        pids = self.pids(host, "sshd")
        assert pids, f"no sshd on {host}"
        self.lab.nsenter(host, ["kill", "-KILL", *map(str, pids)], check=False)
        _wait_gone(pids)

    def restore_sshd(self, host: str) -> None:
        """Start sshd again (the lab takes a killed daemon left as a zombie for stopped)."""
        self.lab.start_service(host, "sshd")
        assert self.pids(host, "sshd"), f"sshd did not start again on {host}"

    def partition(self, host: str) -> None:
        """Take the host's network interface down: packets to and from it vanish."""
        self.lab.nsenter(host, ["ip", "link", "set", "eth0", "down"])

    def heal(self, host: str) -> None:
        self.lab.nsenter(host, ["ip", "link", "set", "eth0", "up"])

    def fill(self, host: str, path: str, *, inodes: bool = False) -> None:
        """Mount a tmpfs over ``path`` (created if missing) in the host's mount namespace,
        holding what ``path`` held plus a little room, then fill that room up: the bytes
        (``df`` shows 0 free), or with ``inodes`` every inode (bytes stay free, but no new
        file can be created)."""
        if inodes:
            limit = '-o nr_inodes=$(($(find "$1" | wc -l) + 1))'
            filler = ":"
        else:
            limit = ""
            filler = 'dd if=/dev/zero of="$1/.dk-fill" bs=4k 2>/dev/null || true'
        script = ('set -e; mkdir -p "$1"; kb=$(du -sk "$1" | cut -f1); tmp=$(mktemp -d); '
                  'cp -a "$1"/. "$tmp"/; '
                  f'mount -t tmpfs -o size=$((kb + 16384))k,mode=755 {limit} tmpfs "$1"; '
                  f'cp -a "$tmp"/. "$1"/; rm -rf "$tmp"; {filler}')
        self.lab.nsenter(host, ["sh", "-c", script, "fill", path])

    def unfill(self, host: str, path: str) -> None:
        """Unmount the tmpfs over ``path`` (what it held then is gone: a lost disk)."""
        self.lab.nsenter(host, ["sh", "-c", 'while mountpoint -q "$1"; do umount "$1"; done',
                                "unfill", path], check=False)

    def stop(self, host: str, service: str) -> None:
        self.lab.stop_service(host, service)

    def start(self, host: str, service: str) -> None:
        self.lab.start_service(host, service)


# -- the fleet -----------------------------------------------------------------------------


@dataclass
class Fleet:
    """The faults suite's project (a deploykit.yml in a temporary directory), the lab and
    the ways to look at the hosts."""

    root: Path
    project_root: Path
    lab: Lab
    inventory: Inventory
    ssh: Callable[[str], Connection]
    infra: Callable[[str], testinfra.host.Host]
    faults: Faults
    base: dict[str, Any]
    env: dict[str, str]
    summaries: list[DeploySummary] = field(default_factory=list)

    # -- deploying ------------------------------------------------------------------------

    def config(self, name: str = "deploykit.yml", **changes: Any) -> Path:
        """Write a deploykit.yml (the base with ``changes`` merged one level deep)."""
        return write_config(self.root / name, self.base, **changes)

    def project(self, config: Path | None = None, host: str | None = None) -> Project:
        return Project.load(config or self.root / "deploykit.yml", host=host)

    def deploy(self, version: str, out: Tripwire | None = None, *, config: Path | None = None,
               host: str | None = None) -> tuple[DeploySummary, Tripwire]:
        """The whole pipeline in this process (lock, backup, strategy, journal, report)."""
        out = out or Tripwire()
        summary = pipeline_deploy(self.project(config, host), DeployOptions(version=version),
                                  out)
        self.summaries.append(summary)
        return summary, out

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``invoke ARGS`` from the project root, as an operator runs it."""
        argv, env = self.command(*args, config=config)
        done = subprocess.run(argv, cwd=self.project_root, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def command(self, *args: str, config: Path | None = None) -> tuple[list[str], dict[str, str]]:
        env = {**self.env, "DEPLOYKIT_CONFIG": str(config or self.root / "deploykit.yml")}
        return [str(self.project_root / ".venv" / "bin" / "invoke"), *args], env

    def ensure(self, version: str = "v1") -> None:
        """``version`` serving on both web hosts, on one colour, every service up."""
        if all(self.serving(h) == version for h in WEB) and self.color(WEB[0]) == \
                self.color(WEB[1]):
            return
        summary, out = self.deploy(version)
        assert summary.ok, out.text

    # -- looking ----------------------------------------------------------------------------

    @property
    def runs(self) -> Path:
        return self.root / ".deploykit" / "runs"

    def report(self, summary: DeploySummary) -> RunReport:
        assert summary.report_path is not None
        return RunReport.read_json(summary.report_path)

    def address(self, host: str) -> str:
        return self.inventory.host(host).address

    def serving(self, host: str) -> str | None:
        """The version users of ``host`` get through nginx (None: not the app)."""
        response = http.request(f"http://{self.address(host)}/version", timeout=5.0)
        try:
            return str(response.json()["version"]) if response.status == 200 else None
        except (ValueError, KeyError, TypeError):
            return None

    def healthy(self, host: str) -> bool:
        response = http.request(f"http://{self.address(host)}/health", timeout=5.0)
        return response.status == 200

    def color(self, host: str) -> str | None:
        f = self.infra(host).file(f"/etc/nginx/deploykit/{APP}.active")
        return f.content_string.strip() if f.exists else None

    def programs(self, host: str) -> dict[str, str]:
        out = self.infra(host).run(f"supervisorctl -c {SUPERVISOR_CONF} status").stdout
        return dict(line.split()[:2] for line in out.splitlines() if line.strip())

    def link(self, host: str, name: str) -> str | None:
        f = self.infra(host).file(f"/srv/{APP}/{name}")
        return str(f.linked_to) if f.is_symlink else None

    def history(self, host: str) -> list[dict[str, Any]]:
        """history.jsonl on ``host``, read directly."""
        f = self.infra(host).file(f"/var/lib/deploykit/{APP}/history.jsonl")
        return [json.loads(x) for x in f.content_string.splitlines()] if f.exists else []

    def ends(self, deploy_id: str) -> dict[str, str]:
        """Per host, the result of ``deploy_id``'s end entry."""
        return {h: e["result"] for h in HOSTS for e in self.history(h)
                if e["id"] == deploy_id and e["event"] == "end"}

    def unlocked(self) -> bool:
        return all(journal.lock_status(self.ssh(h), APP) is None
                   and not self.infra(h).file(f"/var/lib/deploykit/{APP}/lock").exists
                   for h in HOSTS)

    def sql(self, query: str, database: str = APP) -> list[tuple[Any, ...]]:
        with pg.connect(self.ssh("db-1"), database) as session:
            cursor = session.execute(query)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def schema(self) -> int:
        return int(self.sql("SELECT max(version) FROM schema_migrations")[0][0])

    def add_item(self, name: str) -> None:
        response = http.request(f"http://{self.address('web-1')}/api/items", method="POST",
                                body=json.dumps({"name": name}).encode(),
                                headers={"Content-Type": "application/json"})
        assert response.status == 201, response.describe()

    def items(self) -> set[str]:
        response = http.request(f"http://{self.address('web-1')}/api/items")
        assert response.status == 200, response.describe()
        return {item["name"] for item in response.json()["items"]}

    def assert_v1_everywhere(self) -> None:
        """The fleet's known good state after a refused release: v1 through nginx, healthy,
        on one colour, ``current`` on v1."""
        colors = {self.color(h) for h in WEB}
        assert len(colors) == 1, colors
        for host in WEB:
            assert self.serving(host) == "v1", host
            assert self.healthy(host), host
            assert self.link(host, "current") == f"/srv/{APP}/releases/v1"




@pytest.fixture(scope="session")
def fleet(lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
          lab_host: Callable[[str], testinfra.host.Host], project_root: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The faults suite's project on a freshly reset lab (reset again at the end)."""
    root = tmp_path_factory.mktemp("faults")
    source = root / "src"
    shutil.copytree(project_root / "examples" / "app", source,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in BAD_MIGRATIONS.items():
        (source / "migrations" / name).write_text(text)
    (source / "versions" / "v3-badmig.toml").write_text(BAD_MIGRATIONS_VERSION)
    (root / "lab.yml").write_text(yaml.safe_dump(lab.inventory()))
    base: dict[str, Any] = {
        "app": APP, "source": str(source),
        "wheelhouse": str(project_root / ".cache" / "wheelhouse"),
        "inventory": "lab.yml", "web": "web", "db": "db",
        "verify_requests": 10, "grace_seconds": 0.5, "health_interval": 0.2,
        "health_retries": 25, "database": {"name": APP},
        "env": {"DATABASE_URL": "${database_url}", "REDIS_URL": "${redis_url}"},
        "preflight": {"min_disk_mb": 64, "min_memory_mb": 32},
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DEPLOYKIT_WHEELHOUSE", None)
    f = Fleet(root, project_root, lab, lab_inventory, lab_connection, lab_host, Faults(lab),
              base, env)
    f.config()
    lab.reset()
    drop_databases(lab_connection("db-1"), APP)
    try:
        yield f
    finally:
        lab.reset()
        try:
            drop_databases(lab_connection("db-1"), APP)
        except DeployError:
            pass
