"""Blue/green deploys of Docker Compose stacks (runbook 000 with containers).

The colours are compose projects ``<app>-blue`` and ``<app>-green`` on every
web host, each with its own port (``PORT`` in its ``.env``; services use
``network_mode: host``). The deploy is the release backend's
(:mod:`deploykit.strategies.bluegreen`) with compose steps in place of release
steps, so the phases, the health gate, the nginx switch, the verification
through nginx, the automatic switch-back and the grace period are the same:

1. **prepare** the idle colour: ship the release's images (``docker save | gzip``
   over SSH, skipped where the host has the same image id), ``compose up`` its
   project with the release's compose files and the colour's ``.env`` (0600),
   record ``release.json`` beside them, then gate on **container health**
   (``docker inspect``; an unhealthy container fails with its logs tail) and on
   the app's health URL. A failure here and traffic never moves: the idle
   project is put back as it was, fleet-wide.
2. **switch** nginx to the idle colour and **verify** through nginx; a failure
   switches every host back and takes the idle colour down.
3. **finish**: old image tags beyond ``keep_images`` are pruned (never one a
   container uses); after ``grace_seconds`` the old colour is taken ``down``
   (its files and images stay).

:func:`rollback` re-activates the previous colour: its ``release.json`` says
which images and compose files it ran, and the deploy above brings them back up
(images are on the hosts already) and switches traffic to it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deploykit.connection import Connection, connect_all
from deploykit.errors import ConfigError, DeployError
from deploykit.inventory import Host
from deploykit.report import NullReporter, Reporter
from deploykit.runner import Step
from deploykit.secrets import Secret
from deploykit.strategies.bluegreen import COLORS, BlueGreen, DeployOutcome, _Deploy, other
from deploykit.tasks import compose, files, http, nginx

__all__ = ["ComposeBlueGreen", "ComposeRelease", "DeployOutcome", "deploy", "other",
           "previous_release", "rollback"]

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
class ComposeBlueGreen:
    """What to deploy and how. ``env`` becomes each colour's ``.env`` (plus ``PORT`` and
    ``COLOR`` and the release's ``vars``); ``source`` is where images come from (None:
    they are on the hosts);
    ``services``: the services the health gate waits for (default: all)."""

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
    database: None = None  # migrations belong to the release backend's plan

    def __post_init__(self) -> None:
        if sorted(self.ports) != sorted(COLORS):
            raise ConfigError(f"ports must name blue and green, not {sorted(self.ports)}")
        for color in COLORS:
            compose.project_dir(self.project(color))
        if {"PORT", "COLOR"} & (set(self.env) | set(self.release.vars)):
            raise ConfigError("env must not set PORT or COLOR: each colour gets its own")
        clash = sorted(set(self.env) & set(self.release.vars))
        if clash:
            raise ConfigError(f"{clash[0]} is set both by the release's vars and by env")

    def __getattr__(self, name: str) -> Any:
        """Options of the release backend's :class:`BlueGreen` that compose does not set
        take their defaults there (the shared deploy steps read them)."""
        for f in dataclasses.fields(BlueGreen):
            if f.name == name and f.default is not dataclasses.MISSING:
                return f.default
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def artifact(self) -> ComposeRelease:
        """The release (what the shared blue/green steps call the artifact)."""
        return self.release

    @property
    def release_id(self) -> str:
        """The release's version."""
        return self.release.version

    def project(self, color: str) -> str:
        """The compose project of a colour."""
        return f"{self.app}-{color}"

    def program(self, color: str) -> str:
        """What runs a colour: its compose project (the release backend's program)."""
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


class _ComposeDeploy(_Deploy):
    """The release backend's deploy with compose steps (see the module docstring)."""

    plan: ComposeBlueGreen  # type: ignore[assignment]

    def __init__(self, plan: ComposeBlueGreen, web: Sequence[Host], *, deploy_id: str,
                 check: bool, reporter: Reporter, forks: int) -> None:
        super().__init__(plan, web, None, deploy_id=deploy_id, check=check,  # type: ignore[arg-type]
                         reporter=reporter, forks=forks)
        self.report.secrets.extend(v for v in plan.env.values() if isinstance(v, Secret))

    def _already_live(self, active: str) -> bool:
        """True when every host's active colour runs this release."""
        for host in self.web:
            found = read_release(self.conns[host.name], self.plan.project(active))
            if found is None or found.to_json() != self.plan.release.to_json():
                return False
        return True

    def after_failure(self, idle: str, *, mark: bool) -> None:
        """Traffic is back on the old colour: take the idle colour down."""
        self.phase("after failure", [compose.down(self.plan.project(idle),
                                                  name=f"stop {idle}")], self.web, undo="none")

    def check_steps(self, idle: str) -> list[object]:
        plan = self.plan
        return [*self.image_steps(),
                compose.up(plan.project(idle), plan.release.files, plan.color_env(idle)),
                nginx.switch(plan.app, idle, colors=plan.ports)]

    def image_steps(self) -> list[object]:
        source = self.plan.source
        if source is None:
            return []
        return [compose.push_image(image, source, name=f"push image {image}")
                for image in self.plan.release.images]

    def prepare_steps(self, color: str, *, gate: bool) -> list[object]:
        plan = self.plan
        project = plan.project(color)
        steps: list[object] = [
            *self.image_steps(),
            compose.up(project, plan.release.files, plan.color_env(color),
                       name=f"compose up {project}"),
            files.file(f"{compose.project_dir(project)}/{RELEASE_FILE}",
                       plan.release.to_json(), mode=0o644),
        ]
        if gate:
            steps += [
                compose.wait_healthy(project, plan.services, timeout=plan.health_timeout,
                                     name=f"health gate: {color} containers"),
                http.wait_for_task(
                    f"http://127.0.0.1:{plan.ports[color]}{plan.health_path}",
                    json_expect={"status": "ok"}, retries=plan.health_retries,
                    interval=plan.health_interval, via_ssh=True,
                    name=f"health gate: {color} {plan.health_path}"),
            ]
        return steps

    def stop_steps(self, color: str) -> list[object]:
        """After the grace period: the old colour's project down."""
        return [compose.down(self.plan.project(color), name=f"stop {color}")]

    def finish_steps(self) -> list[object]:
        """After a good switch: image versions beyond ``keep_images`` pruned."""
        return [Step(compose.prune_images(repo, keep=self.plan.keep_images),
                     name=f"prune images {repo}") for repo in self.plan.repositories()]


def read_release(conn: Connection, project: str) -> ComposeRelease | None:
    """The release a colour's project last ran on a host (``release.json``), or None."""
    path = f"{compose.project_dir(project)}/{RELEASE_FILE}"
    result = conn.run(["cat", "--", path], write=False, check=False)
    if result.failed:
        return None
    try:
        return ComposeRelease.from_json(result.stdout)
    except (ValueError, KeyError, TypeError):
        return None


def deploy(plan: ComposeBlueGreen, web: Sequence[Host], *, deploy_id: str,
           check: bool = False, reporter: Reporter | None = None,
           forks: int = 10) -> DeployOutcome:
    """Deploy ``plan.release`` blue/green to the ``web`` hosts (see the module docstring).

    Never raises for a failure on the hosts: the outcome says ``deployed``,
    ``unchanged``, ``failed`` (before the switch: traffic never moved),
    ``rolled_back`` (after it: switched back) or ``checked``, and where traffic is.
    """
    return _ComposeDeploy(plan, web, deploy_id=deploy_id, check=check,
                          reporter=reporter or NullReporter(), forks=forks).run()


def previous_release(plan: ComposeBlueGreen, web: Sequence[Host]) -> tuple[str, ComposeRelease]:
    """The colour traffic is not on and the release it last ran, the same on every host.

    Raises :class:`DeployError` naming the host when there is none or the hosts differ.
    """
    opened = connect_all(list(web))
    try:
        found: dict[str, tuple[str, ComposeRelease | None]] = {}
        for name, conn in opened.items():
            if isinstance(conn, DeployError):
                raise DeployError(f"cannot roll back: {conn.message}", host=name)
            active = nginx.active_color(conn, plan.app)
            if active is None:
                raise DeployError(f"cannot roll back {plan.app}: no active colour",
                                  host=name)
            found[name] = (other(active), read_release(conn, plan.project(other(active))))
    finally:
        for conn in opened.values():
            if isinstance(conn, Connection):
                conn.close()
    missing = [n for n, (_, r) in found.items() if r is None]
    if missing:
        raise DeployError(f"cannot roll back {plan.app}: the previous colour has no release "
                          f"on {', '.join(missing)}", host=missing[0])
    if len({(c, r.to_json() if r else "") for c, r in found.values()}) > 1:
        shown = ", ".join(f"{n} {c} {r.version if r else '-'}" for n, (c, r) in found.items())
        raise DeployError(f"cannot roll back {plan.app}: hosts differ ({shown})")
    color, release = next(iter(found.values()))
    assert release is not None
    return color, release


def rollback(plan: ComposeBlueGreen, web: Sequence[Host], *, deploy_id: str,
             reporter: Reporter | None = None, forks: int = 10) -> DeployOutcome:
    """Re-activate the previous colour with the images and files it ran (health gate,
    switch and verification as for a deploy); ``plan`` gives the app, env and ports."""
    _, release = previous_release(plan, web)
    return deploy(replace(plan, release=release, source=None), web, deploy_id=deploy_id,
                  reporter=reporter, forks=forks)
