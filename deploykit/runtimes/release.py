"""The release runtime: a colour is a release directory, its venv and one program.

On each web host, colour ``blue`` is the link ``/srv/<app>/blue`` -> a release
directory (``releases.install``: the artifact unpacked, its venv built from bundled
wheels) and the supervisor program ``<app>-blue`` running ``command`` in that directory
on the colour's port (``PORT``).

**Each release gets its own environment file** (issue 17 item 6):
``/srv/<app>/env/<release>-<hash>.env``, named by the release and a hash of its content,
written once and never rewritten. The program reads it through ``APP_ENV_FILE`` and the
release directory's ``.env`` link. Preparing the idle colour therefore never touches the
file the live colour reads; a switch-back leaves it exactly as it was; and a rollback
(:meth:`ReleaseSpec.for_rollback`) runs the previous release with the very file it served
with (the ledger records it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from deploykit.artifacts import Artifact
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.journal import RUNS_DIR
from deploykit.runtimes import ledger
from deploykit.secrets import Secret
from deploykit.shell import quote
from deploykit.strategies.base import (
    COLORS,
    ColourState,
    HostState,
    ReleaseState,
    Runtime,
    StepList,
)
from deploykit.tasks import files, http, nginx, releases, services, system

__all__ = ["ReleaseRuntime", "ReleaseSpec"]


@dataclass(frozen=True)
class ReleaseSpec:
    """What to deploy and how (every field but the first three has a default).

    ``command`` runs in the release directory; a relative first element is taken from
    the release (``venv/bin/gunicorn``). The colour's port reaches the program as
    ``PORT``, its environment file as ``APP_ENV_FILE``. ``env`` becomes the release's
    environment file (``env_mode``, group ``app_user``, owner ``env_owner`` or the app
    user); ``env_file`` instead names an existing one (a rollback's). ``database``: the
    library entry point migrates it after install (the pipeline brings its own
    ``post_install``). ``verify_suite`` (a testinfra suite) gates the switch with its
    ``pre_switch`` and ``post_switch`` tests.
    """

    app: str
    artifact: Artifact
    env: str | Secret | None
    database: str | None = None
    ports: Mapping[str, int] = field(default_factory=lambda: {"blue": 8001, "green": 8002})
    command: Sequence[str] = ("venv/bin/gunicorn", "-c", "gunicorn.conf.py",
                              "sampleapp.web:application")
    app_user: str = "www-data"
    server_name: str = "_"
    health_path: str = "/health"
    version_path: str = "/version"
    health_retries: int = 40
    health_interval: float = 0.25
    latency_budget_ms: float | None = 500.0
    verify_requests: int = 40
    grace_seconds: float = 2.0
    keep_releases: int = 5
    startsecs: int = 2
    startretries: int = 1
    env_mode: int = 0o600
    env_owner: str | None = None
    env_file: str | None = None
    verify_suite: str | None = None
    verify_timeout: float = 300.0
    verify_report_dir: str = str(RUNS_DIR)
    env_secrets: Sequence[Secret] | None = None
    """The secret values inside ``env``, to redact (None: the whole ``env`` text is one
    secret, and so is any run of 15 of its characters, host addresses included)."""

    def __post_init__(self) -> None:
        nginx.check_server_name(self.server_name, f"{self.app}: server_name")
        if sorted(self.ports) != sorted(COLORS):
            raise ConfigError(f"ports must name blue and green, not {sorted(self.ports)}")
        if self.verify_suite is not None and not Path(self.verify_suite).exists():
            raise ConfigError(f"verify_suite {self.verify_suite!r} not found")
        if (self.env is None) == (self.env_file is None):
            raise ConfigError("give exactly one of env (the content) and env_file (a path "
                              "on the hosts)")
        if self.env_file is not None and (not self.env_file.startswith(
                f"{releases.DEFAULT_ROOT}/{self.app}/env/") or "\n" in self.env_file):
            raise ConfigError(f"env_file must be under {releases.DEFAULT_ROOT}/{self.app}/env/, "
                              f"not {self.env_file!r}")

    @property
    def release_id(self) -> str:
        """The release this artifact installs as."""
        return self.artifact.release_id

    def program(self, color: str) -> str:
        """The supervisor program of a colour."""
        return f"{self.app}-{color}"

    @property
    def env_path(self) -> str:
        """The release's environment file on the hosts (by its content's hash)."""
        if self.env_file is not None:
            return self.env_file
        assert self.env is not None
        text = self.env.reveal() if isinstance(self.env, Secret) else self.env
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return f"{releases.DEFAULT_ROOT}/{self.app}/env/{self.release_id}-{digest}.env"

    def for_rollback(self, artifact: Artifact, env_file: str | None) -> ReleaseSpec:
        """This spec for another (already installed) release with the environment file it
        served with (None: this spec's ``env``)."""
        if env_file is None:
            return replace(self, artifact=artifact)
        return replace(self, artifact=artifact, env=None, env_file=env_file)


class ReleaseRuntime(Runtime):
    """A colour = a release directory + venv + a supervisor program (module docstring)."""

    kind: ClassVar[str] = "release"
    spec: ReleaseSpec

    def __init__(self, spec: ReleaseSpec) -> None:
        super().__init__(spec, f"{releases.DEFAULT_ROOT}/{spec.app}/{ledger.LEDGER_FILE}")

    @classmethod
    def reader(cls, app: str, ports: Mapping[str, int] | None = None) -> ReleaseRuntime:
        """A runtime for reading hosts only (``inspect``, the ledger: ``status``,
        ``verify``, choosing a rollback target), with no artifact to deploy."""
        placeholder = Artifact(app, "none", Path("(no artifact)"), "0" * 64, 0)
        spec = ReleaseSpec(app, placeholder, None,
                           ports=ports or {"blue": 8001, "green": 8002},
                           env_file=f"{releases.DEFAULT_ROOT}/{app}/env/none.env")
        return cls(spec)

    @property
    def version(self) -> str:
        return self.spec.artifact.version

    @property
    def secrets(self) -> list[Secret]:
        if self.spec.env_secrets is not None:
            return list(self.spec.env_secrets)
        return [self.spec.env] if isinstance(self.spec.env, Secret) else []

    def program(self, color: str) -> str:
        return self.spec.program(color)

    # -- reading a host --------------------------------------------------------------------

    def inspect(self, conn: Connection, host: Host) -> HostState:
        active = nginx.active_color(conn, self.app)
        infos = releases.list_releases(conn, self.app)
        colors = {}
        for color in COLORS:
            held = next((i.release_id for i in infos if color in i.links), None)
            status = services.status(conn, self.program(color))
            colors[color] = ColourState(color, held, status.running if status.known else None)
        entries = ledger.read(conn, self.ledger_path)
        return HostState(conn.name, active, colors, ledger.states(entries),
                         tuple(i.release_id for i in infos if i.complete))

    # -- steps -----------------------------------------------------------------------------

    def env_steps(self) -> StepList:
        """The release's own environment file (written once; see the module docstring)."""
        spec = self.spec
        if spec.env is None:
            return []
        env = spec.env if isinstance(spec.env, Secret) else Secret(spec.env)
        directory = f"{releases.DEFAULT_ROOT}/{spec.app}/env"
        return [files.directory(directory, mode=0o755, recursive=True),
                files.file(spec.env_path, env, mode=spec.env_mode,
                           owner=spec.env_owner or spec.app_user, group=spec.app_user,
                           name=f"env file {spec.release_id}")]

    def install_steps(self, color: str) -> StepList:
        spec = self.spec
        rdir = releases.release_dir(spec.app, spec.release_id)
        return [*self.env_steps(),
                *self.shared_env_steps(first=True),
                releases.install(spec.app, spec.artifact, shared_files=()),
                files.symlink(f"{rdir}/.env", spec.env_path, force=True,
                              name=f"link {spec.release_id}/.env"),
                # an explicit deploy may bring back a release once marked failed
                releases.switch(spec.app, spec.release_id, link=color, allow_failed=True)]

    def start_steps(self, color: str) -> StepList:
        spec = self.spec
        rdir = releases.release_dir(spec.app, spec.release_id)
        command = list(spec.command)
        if not command[0].startswith("/"):
            command[0] = f"{rdir}/{command[0]}"
        return [services.program(
            spec.program(color), command, directory=rdir, user=spec.app_user,
            environment={"PORT": str(spec.ports[color]), "APP_ENV_FILE": spec.env_path},
            startsecs=spec.startsecs, startretries=spec.startretries,
            task_name=f"program {spec.program(color)}")]

    def gate_steps(self, color: str) -> StepList:
        spec = self.spec
        return [http.wait_for_task(
            f"http://127.0.0.1:{spec.ports[color]}{spec.health_path}",
            json_expect={"status": "ok"}, retries=spec.health_retries,
            interval=spec.health_interval, via_ssh=True,
            name=f"health gate: {color} {spec.health_path}")]

    def stop_steps(self, color: str) -> StepList:
        return [services.service(self.spec.program(color), "stopped", name=f"stop {color}")]

    def resume_steps(self, color: str, state: HostState) -> StepList:
        return [services.service(self.spec.program(color), "started",
                                 startsecs=self.spec.startsecs,
                                 startretries=self.spec.startretries, name=f"start {color}")]

    def for_release(self, conn: Connection, release: str, verified: object | None
                    ) -> ReleaseRuntime:
        infos = {i.release_id: i for i in releases.list_releases(conn, self.app)}
        info = infos.get(release)
        if info is None or not info.complete or info.sha256 is None:
            raise ConfigError(f"release {release} is not installed on {conn.name}")
        artifact = Artifact(self.app, info.version or release, Path(f"(installed {release})"),
                            info.sha256, 0)
        env = verified.env if isinstance(verified, ledger.Entry) else None
        return ReleaseRuntime(self.spec.for_rollback(artifact, env))

    def discard_steps(self, color: str, before: HostState) -> StepList:
        spec = self.spec
        found = before.colors.get(color)
        held = found.release if found is not None else None
        # a program this run defined was removed by the start phase's own undo
        steps: StepList = list(self.stop_steps(color)) if found is not None \
            and found.running is not None else []
        if held is not None and held != spec.release_id:
            steps.append(releases.switch(spec.app, held, link=color, allow_failed=True,
                                         name=f"{color} back to {held}"))
        if spec.release_id not in before.installed:
            if held is None:
                steps.append(files.absent(f"{releases.DEFAULT_ROOT}/{spec.app}/{color}"))
            steps.append(files.absent(releases.release_dir(spec.app, spec.release_id),
                                      name=f"remove release {spec.release_id}"))
        return steps

    def finish_steps(self, color: str) -> StepList:
        spec = self.spec
        return [releases.switch(spec.app, spec.release_id, allow_failed=True),
                *self.shared_env_steps(),
                releases.cleanup(spec.app, keep=spec.keep_releases)]

    def shared_env_steps(self, *, first: bool = False) -> StepList:
        """``shared/.env``: a copy of the live release's environment file for people and
        tools (``invoke verify`` suites), written once the release is verified (``first``:
        at install, only when there is none yet). No program reads it: a colour reads its
        release's own file."""
        spec = self.spec
        shared = f"{releases.DEFAULT_ROOT}/{spec.app}/shared"
        owner = spec.env_owner or spec.app_user
        directory = files.directory(shared, mode=0o755, recursive=True)
        copy = ["install", "-m", f"{spec.env_mode:o}", "-o", owner, "-g", spec.app_user,
                spec.env_path, f"{shared}/.env"]
        if first:
            return [directory, system.command(copy, creates=f"{shared}/.env",
                                              name="shared .env: the first release's")]
        if spec.env is not None:
            env = spec.env if isinstance(spec.env, Secret) else Secret(spec.env)
            return [directory, files.file(f"{shared}/.env", env, mode=spec.env_mode,
                                          owner=owner, group=spec.app_user,
                                          name="shared .env: the live one")]
        return [directory, system.command(
            copy, unless=f"cmp -s {quote(spec.env_path)} {quote(shared + '/.env')}",
            name="shared .env: the live one")]

    def check_steps(self, color: str) -> StepList:
        spec = self.spec
        return [*self.env_steps(), releases.install(spec.app, spec.artifact, shared_files=()),
                nginx.switch(spec.app, color, colors=spec.ports)]

    def ledger_steps(self, state: ReleaseState, *, release: str | None = None,
                     color: str | None = None, reason: str = "", deploy_id: str = "",
                     rollback: bool = False) -> StepList:
        release = release or self.release_id
        steps: StepList = [ledger.record(
            self.ledger_path, release, state, deploy_id=deploy_id, color=color,
            rollback=rollback, reason=reason,
            env=self.spec.env_path if release == self.release_id else None)]
        if state == ReleaseState.FAILED:  # the release directory's own mark, for `status`
            steps.append(releases.mark_failed(self.app, release, reason=reason or "failed"))
        elif state == ReleaseState.VERIFIED:  # verified now: no longer marked failed
            steps.append(releases.mark_ok(self.app, release))
        return steps
