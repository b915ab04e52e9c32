"""The compose runtime: a colour is a Docker Compose project.

The colours are compose projects ``<app>-blue`` and ``<app>-green`` on every web host,
each with its own port (``PORT`` in its ``.env``; services use ``network_mode: host``)
and its own ``.env`` (0600): preparing one colour never touches the other's.

* **install**: ship the release's images (``docker save | gzip`` over SSH, skipped where
  the host has the same image id); nothing that serves restarts.
* **start**: ``compose up`` the colour's project with the release's files and the
  colour's ``.env``; ``release.json`` beside them, and a copy in the app's release
  records (``/srv/compose/<app>.releases/<version>.json``), which a rollback reads.
* **gate**: container health (``docker inspect``; an unhealthy container fails with its
  logs tail), then the app's health URL on the colour's port.
* **stop**: ``compose down`` (files and images stay). **finish**: old image tags beyond
  ``keep_images`` pruned (never one a container uses).

A rollback (:meth:`ComposeRuntime.for_release`) runs a verified release's recorded files,
images and vars again; a release that failed verification is never a target (the ledger).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.journal import RUNS_DIR
from deploykit.runner import Step
from deploykit.runtimes import ledger
from deploykit.secrets import Secret
from deploykit.shell import quote
from deploykit.strategies import phased
from deploykit.strategies.base import (
    COLORS,
    ColourState,
    HostState,
    ReleaseState,
    Runtime,
    StepList,
)
from deploykit.tasks import compose, files, http, nginx

__all__ = ["RELEASE_FILE", "ComposeRelease", "ComposeRuntime", "ComposeSpec", "read_release",
           "records_dir"]

RELEASE_FILE = "release.json"


@dataclass(frozen=True)
class ComposeRelease:
    """One version of the stack: its compose files (name -> text), the images they run,
    and ``vars``: the release's own, non-secret ``.env`` values (``IMAGE=shop:2.1``), kept
    with it so that a rollback runs exactly what the release ran."""

    version: str
    files: Mapping[str, str]
    images: Sequence[str] = ()
    vars: Mapping[str, str] = field(default_factory=dict)

    @property
    def release_id(self) -> str:
        """The release's name in reports (its version)."""
        return self.version

    def to_json(self) -> str:
        """What ``release.json`` holds on each host (no secret: those are in ``.env``)."""
        return json.dumps({"version": self.version, "images": list(self.images),
                           "files": dict(self.files), "vars": dict(self.vars)},
                          indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ComposeRelease:
        """Read ``release.json``."""
        data = json.loads(text)
        return cls(str(data["version"]), dict(data["files"]), tuple(data.get("images", ())),
                   dict(data.get("vars", {})))


@dataclass(frozen=True)
class ComposeSpec:
    """What to deploy and how. ``env`` becomes each colour's ``.env`` (plus ``PORT`` and
    ``COLOR`` and the release's ``vars``); ``source`` is where images come from (None:
    they are on the hosts); ``services``: the services the health gate waits for
    (default: all). The traffic and verification settings are the release runtime's."""

    app: str
    release: ComposeRelease
    env: Mapping[str, compose.EnvValue]
    source: compose.ImageSource | None = None
    services: Sequence[str] | None = None
    ports: Mapping[str, int] = field(default_factory=lambda: {"blue": 8001, "green": 8002})
    server_name: str = "_"
    health_path: str = "/health"
    version_path: str = "/version"
    health_timeout: float = 60.0
    health_retries: int = 40
    health_interval: float = 0.25
    latency_budget_ms: float | None = 500.0
    verify_requests: int = 40
    grace_seconds: float = 2.0
    keep_images: int = 3
    verify_suite: str | None = None
    verify_timeout: float = 300.0
    verify_report_dir: str = str(RUNS_DIR)
    database: None = None  # migrations come through the pipeline's post_install
    phased: bool = False
    """Start the colour's services in dependency order (``depends_on``), each gated on its
    container health and its ``checks`` before the next phase starts (runbook 004)."""
    checks: Mapping[str, Any] = field(default_factory=dict)
    """Per service, extra :mod:`~deploykit.strategies.phased` checks (phased start only)."""

    def __post_init__(self) -> None:
        nginx.check_server_name(self.server_name, f"{self.app}: server_name")
        if sorted(self.ports) != sorted(COLORS):
            raise ConfigError(f"ports must name blue and green, not {sorted(self.ports)}")
        for color in COLORS:
            compose.project_dir(self.project(color))
        if {"PORT", "COLOR"} & (set(self.env) | set(self.release.vars)):
            raise ConfigError("env must not set PORT or COLOR: each colour gets its own")
        clash = sorted(set(self.env) & set(self.release.vars))
        if clash:
            raise ConfigError(f"{clash[0]} is set both by the release's vars and by env")

    @property
    def release_id(self) -> str:
        """The release's version."""
        return self.release.version

    def project(self, color: str) -> str:
        """The compose project of a colour."""
        return f"{self.app}-{color}"

    def program(self, color: str) -> str:
        """What runs a colour: its compose project."""
        return self.project(color)

    def color_env(self, color: str) -> dict[str, compose.EnvValue]:
        """The colour's ``.env`` values."""
        return {**self.env, **self.release.vars, "PORT": str(self.ports[color]),
                "COLOR": color}

    def repositories(self) -> list[str]:
        """The image repositories of the release (for pruning old tags)."""
        repos = []
        for image in self.release.images:
            last = image.rsplit("/", 1)[-1]
            repo = image.rsplit(":", 1)[0] if ":" in last else image
            if repo not in repos:
                repos.append(repo)
        return repos


def records_dir(app: str) -> str:
    """Where each host keeps every release's ``release.json`` (by version)."""
    return f"{compose.COMPOSE_ROOT}/{app}.releases"


def _read_json(conn: Connection, path: str) -> ComposeRelease | None:
    result = conn.run(["cat", "--", path], write=False, check=False)
    if result.failed:
        return None
    try:
        return ComposeRelease.from_json(result.stdout)
    except (ValueError, KeyError, TypeError):
        return None


def read_release(conn: Connection, project: str) -> ComposeRelease | None:
    """The release a colour's project last ran on a host (``release.json``), or None."""
    return _read_json(conn, f"{compose.project_dir(project)}/{RELEASE_FILE}")


class ComposeRuntime(Runtime):
    """A colour = a compose project (see the module docstring)."""

    kind: ClassVar[str] = "compose"
    spec: ComposeSpec

    def __init__(self, spec: ComposeSpec) -> None:
        super().__init__(spec, f"{compose.COMPOSE_ROOT}/{spec.app}.{ledger.LEDGER_FILE}")
        self._held: dict[tuple[str, str], ComposeRelease] = {}

    @classmethod
    def reader(cls, app: str, ports: Mapping[str, int] | None = None) -> ComposeRuntime:
        """A runtime for reading hosts only (``inspect``, the ledger), with no release."""
        return cls(ComposeSpec(app, ComposeRelease("none", {}), {},
                               ports=ports or {"blue": 8001, "green": 8002}))

    @property
    def version(self) -> str:
        return self.spec.release.version

    @property
    def secrets(self) -> list[Secret]:
        return [v for v in self.spec.env.values() if isinstance(v, Secret)]

    def program(self, color: str) -> str:
        return self.spec.project(color)

    # -- reading a host --------------------------------------------------------------------

    def inspect(self, conn: Connection, host: Host) -> HostState:
        active = nginx.active_color(conn, self.app)
        colors = {}
        for color in COLORS:
            project = self.spec.project(color)
            held = read_release(conn, project)
            if held is not None:
                self._held[(conn.name, color)] = held
            containers = compose.ps(conn, project)
            running = bool(containers) and all(c.state == "running" for c in containers)
            colors[color] = ColourState(color, held.version if held else None, running)
        listed = conn.run(f"ls -1 -- {quote(records_dir(self.app))} 2>/dev/null || true",
                          write=False).stdout.split()
        installed = tuple(n[:-5] for n in listed if n.endswith(".json"))
        entries = ledger.read(conn, self.ledger_path)
        return HostState(conn.name, active, colors, ledger.states(entries), installed)

    # -- steps -----------------------------------------------------------------------------

    def image_steps(self) -> StepList:
        source = self.spec.source
        if source is None:
            return []
        return [compose.push_image(image, source, name=f"push image {image}")
                for image in self.spec.release.images]

    def install_steps(self, color: str) -> StepList:
        return self.image_steps()

    def _up(self, color: str, release: ComposeRelease | None = None) -> StepList:
        spec = self.spec if release is None else replace(self.spec, release=release)
        project = spec.project(color)
        record = spec.release.to_json()
        return [
            compose.up(project, spec.release.files, spec.color_env(color),
                       name=f"compose up {project}"),
            files.file(f"{compose.project_dir(project)}/{RELEASE_FILE}", record, mode=0o644),
            files.directory(records_dir(spec.app), mode=0o755),
            files.file(f"{records_dir(spec.app)}/{spec.release.version}.json", record,
                       mode=0o644, name=f"release record {spec.release.version}"),
        ]

    def start_steps(self, color: str) -> StepList:
        if not self.spec.phased:
            return self._up(color)
        return self.phased_steps(color) + self._up(color)

    def phased_steps(self, color: str) -> StepList:
        """The colour's services started phase by phase, each phase gated (see ``phased``);
        the full ``compose up`` after them then finds everything running."""
        spec = self.spec
        services = phased.compose_stack(spec.project(color), spec.release.files,
                                        spec.color_env(color), hosts="web",
                                        checks=spec.checks, health_timeout=spec.health_timeout)
        steps: StepList = []
        for layer in phased.plan_phases(services):
            for service in layer:
                steps += service.start_tasks()
                steps += [phased.check_step(service.name, c) for c in service.checks()]
        return steps

    def gate_steps(self, color: str) -> StepList:
        spec = self.spec
        return [
            compose.wait_healthy(spec.project(color), spec.services, timeout=spec.health_timeout,
                                 name=f"health gate: {color} containers"),
            http.wait_for_task(
                f"http://127.0.0.1:{spec.ports[color]}{spec.health_path}",
                json_expect={"status": "ok"}, retries=spec.health_retries,
                interval=spec.health_interval, via_ssh=True,
                name=f"health gate: {color} {spec.health_path}"),
        ]

    def stop_steps(self, color: str) -> StepList:
        return [compose.down(self.spec.project(color), name=f"stop {color}")]

    def resume_steps(self, color: str, state: HostState) -> StepList:
        held = self._held.get((state.host, color))
        if held is None:
            return [compose.down(self.spec.project(color),
                                 name=f"{color} has no release.json: cannot start it")]
        return self._up(color, held)[:1]

    def for_release(self, conn: Connection, release: str, verified: object | None
                    ) -> ComposeRuntime:
        found = _read_json(conn, f"{records_dir(self.app)}/{release}.json")
        if found is None:
            raise ConfigError(f"release {release} has no record in {records_dir(self.app)} "
                              f"on {conn.name}")
        return ComposeRuntime(replace(self.spec, release=found, source=None))

    def discard_steps(self, color: str, before: HostState) -> StepList:
        return self.stop_steps(color)

    def finish_steps(self, color: str) -> StepList:
        return [Step(compose.prune_images(repo, keep=self.spec.keep_images),
                     name=f"prune images {repo}") for repo in self.spec.repositories()]

    def check_steps(self, color: str) -> StepList:
        spec = self.spec
        return [*self.image_steps(),
                compose.up(spec.project(color), spec.release.files, spec.color_env(color)),
                nginx.switch(spec.app, color, colors=spec.ports)]

    def ledger_steps(self, state: ReleaseState, *, release: str | None = None,
                     color: str | None = None, reason: str = "", deploy_id: str = "",
                     rollback: bool = False) -> StepList:
        return [ledger.record(self.ledger_path, release or self.release_id, state,
                              deploy_id=deploy_id, color=color, rollback=rollback,
                              reason=reason)]
