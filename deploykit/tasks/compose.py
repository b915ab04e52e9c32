"""Docker Compose stacks on a host, and container images shipped without a registry.

::

    from deploykit.tasks import compose

    compose.up("shop-blue", {"docker-compose.yml": text}, {"DB_PASSWORD": Secret(pw)})
    compose.wait_healthy("shop-blue", ["web", "worker"], timeout=60)
    compose.down("shop-green")
    compose.push_image("shop:2.1", compose.HostDocker(build_conn))
    compose.build("shop:2.1", "/srv/build/shop")
    compose.prune_images("shop", keep=3)
    compose.ps(conn, "shop-blue")

A project lives in ``/srv/compose/<project>/``: its compose file(s) and its
``.env`` (mode 0600, rendered from vars whose :class:`~deploykit.secrets.Secret`
values never reach a log). Compose reads ``.env`` from the project directory for
interpolation; services that need the values name it with ``env_file: .env``.

**Both compose programs**: the ``docker compose`` plugin (v2) when the host has
it, else ``docker-compose`` (v1). Every probe carries both command lines and the
host's shell picks the one that works (:func:`command` builds them); apply
commands use the flavour the probe reported.

**Idempotence** uses compose's own config hash: ``compose config --hash`` per
service against the ``com.docker.compose.config-hash`` label of its containers,
plus the image id each container runs against the id its image name has now (v2
leaves image ids out of the hash). Unchanged files, hashes and images, every
container running: ``ok``, and nothing is sent but the one probe. Otherwise
``up -d`` and compose recreates only the services that differ.

**Images without a registry**: :func:`push_image` streams ``docker save | gzip``
from a source (:class:`LocalDocker` on the controller, or :class:`HostDocker`, a
build host over SSH) through the controller into ``docker load`` on the host,
and is ``ok`` (nothing sent) when the host already has the same image id. Run it
with a :class:`~deploykit.runner.Runner` over the fleet: hosts load in parallel.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import select
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import paramiko
import yaml

from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import ConfigError, ConnectError, RemoteCommandError, TaskError
from deploykit.result import Result, Status
from deploykit.secrets import Secret
from deploykit.shell import join, quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "COMPOSE_ROOT", "Container", "HostDocker", "ImageSource", "LocalDocker", "build",
    "command", "detect", "down", "env_file", "image_ids", "project_dir", "prune_images",
    "ps", "pull", "push_image", "up", "wait_healthy",
]

COMPOSE_ROOT = "/srv/compose"
Flavour = Literal["v2", "v1"]
FLAVOURS: tuple[Flavour, ...] = ("v2", "v1")
LOG_LINES = 20
CHUNK = 256 * 1024
LABEL = "com.docker.compose"
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,254}\Z")
_HEALTHY = ("healthy", "none")  # "none": no healthcheck, running is enough

EnvValue = str | int | Secret
ComposeFiles = Mapping[str, str | bytes] | Sequence[str | Path]


# -- names and command lines -----------------------------------------------------------


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(f"invalid {what} {value!r}")
    return value


def project_dir(project: str) -> str:
    """Where a project's compose files and ``.env`` live on the host."""
    return f"{COMPOSE_ROOT}/{_check(_PROJECT, project, 'compose project name')}"


def command(flavour: Flavour, project: str, files: Sequence[str], *args: str) -> list[str]:
    """The compose command line for ``flavour`` (``v2``: ``docker compose``, ``v1``:
    ``docker-compose``), run in :func:`project_dir`, with the project's files."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"compose flavour must be v2 or v1, not {flavour!r}")
    base = ["docker", "compose"] if flavour == "v2" else ["docker-compose"]
    directory = project_dir(project)
    argv = [*base, "--project-name", project, "--project-directory", directory]
    for name in files:
        argv += ["--file", f"{directory}/{_check(_FILE, name, 'compose file name')}"]
    return argv + list(args)


FLAVOUR_SCRIPT = ("if docker compose version >/dev/null 2>&1; then dk_flavour=v2; "
                  "elif command -v docker-compose >/dev/null 2>&1; then dk_flavour=v1; "
                  "else dk_flavour=none; fi; echo \"flavour $dk_flavour\"")
"""Shell that finds the host's compose (v2 plugin preferred) and prints ``flavour v2|v1|none``."""


def _either(project: str, files: Sequence[str], *args: str, tail: str = "") -> str:
    """Shell (after :data:`FLAVOUR_SCRIPT`) running the command line of the host's flavour."""
    v2, v1 = (join(command(f, project, files, *args)) + tail for f in FLAVOURS)
    return f'case "$dk_flavour" in v2) {v2} ;; v1) {v1} ;; esac'


def _no_compose(conn: Connection) -> TaskError:
    return TaskError("neither the docker compose plugin (v2) nor docker-compose (v1) "
                     "works on this host; install one of them", host=conn.name)


def detect(conn: Connection) -> Flavour:
    """The compose flavour the host has: ``v2`` preferred, else ``v1`` (one round trip)."""
    out = conn.run(FLAVOUR_SCRIPT, write=False, check=False).stdout
    flavour = _field(out, "flavour")
    if flavour not in FLAVOURS:
        raise _no_compose(conn)
    return flavour


def _field(output: str, key: str) -> str:
    for line in output.splitlines():
        if line.startswith(key + " "):
            return line[len(key) + 1:].strip()
    return ""


# -- containers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """One container of a compose project, as ``docker inspect`` sees it."""

    service: str
    id: str
    state: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, or none (no healthcheck)
    config_hash: str
    image_id: str
    image: str
    name: str = ""

    @property
    def healthy(self) -> bool:
        """Running, and healthy when it has a healthcheck."""
        return self.state == "running" and self.health in _HEALTHY


_INSPECT_FORMAT = (f"ctr {{{{index .Config.Labels \"{LABEL}.service\"}}}}|{{{{.Id}}}}|"
                   "{{.State.Status}}|"
                   "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}|"
                   f"{{{{index .Config.Labels \"{LABEL}.config-hash\"}}}}|{{{{.Image}}}}|"
                   "{{.Config.Image}}|{{.Name}}")


def _containers_script(project: str) -> str:
    """Shell printing one ``ctr`` line per container of the project (one-offs left out)."""
    flt = join(["--filter", f"label={LABEL}.project={project}",
                "--filter", f"label={LABEL}.oneoff=False"])
    return (f"ids=$(docker ps -aq --no-trunc {flt} 2>/dev/null); "
            f"[ -z \"$ids\" ] || docker inspect -f {quote(_INSPECT_FORMAT)} $ids")


def _parse_containers(output: str) -> list[Container]:
    found = []
    for line in output.splitlines():
        if not line.startswith("ctr "):
            continue
        parts = line[4:].split("|")
        if len(parts) == 8:
            service, cid, state, health, chash, image_id, image, name = parts
            found.append(Container(service, cid, state, health, chash, image_id, image,
                                   name.lstrip("/")))
    return sorted(found, key=lambda c: (c.service, c.name))


def ps(conn: Connection, project: str) -> list[Container]:
    """The project's containers (one round trip, read-only)."""
    project_dir(project)
    return _parse_containers(conn.run(_containers_script(project), write=False,
                                      check=False).stdout)


def image_ids(conn: Connection, images: Sequence[str]) -> dict[str, str | None]:
    """Image name -> id on the host (None when absent), one round trip."""
    out = conn.run(_image_ids_script(images), write=False, check=False).stdout
    found = _parse_image_ids(out)
    return {i: found.get(i) for i in images}


def _image_ids_script(images: Sequence[str]) -> str:
    lines = [f"printf 'img %s %s\\n' {quote(i)} \"$(docker image inspect -f '{{{{.Id}}}}' "
             f"{quote(i)} 2>/dev/null)\"" for i in images]
    return "\n".join(lines) or ":"


def _parse_image_ids(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "img":
            found[parts[1]] = parts[2]
    return found


def _logs_tail(conn: Connection, containers: Sequence[Container], lines: int) -> str:
    parts = []
    for c in containers:
        out = conn.run(["docker", "logs", "--tail", str(lines), c.id], write=False,
                       check=False)
        text = (out.stdout + out.stderr).strip() or "(no output)"
        parts.append(f"--- {c.service} ({c.name}, {c.state}, {c.health}) last {lines} log "
                     f"lines ---\n{text}")
    return "\n".join(parts)


# -- the env file ------------------------------------------------------------------------


def env_file(values: Mapping[str, EnvValue]) -> Secret:
    """The ``.env`` text for ``values`` (one ``KEY=value`` per line), as a Secret: it holds
    the secrets in clear, so it is never shown. A value with a newline is refused."""
    lines = []
    for key, value in values.items():
        _check(_ENV_KEY, key, "environment variable name")
        text = value.reveal() if isinstance(value, Secret) else str(value)
        if "\n" in text or "\r" in text or "\x00" in text:
            raise ConfigError(f"environment variable {key}: a compose .env value cannot "
                              "contain a newline or NUL")
        lines.append(f"{key}={text}\n")
    return Secret("".join(lines))


def _load_files(files: ComposeFiles) -> dict[str, bytes]:
    if isinstance(files, Mapping):
        loaded = {name: content.encode() if isinstance(content, str) else bytes(content)
                  for name, content in files.items()}
    else:
        loaded = {}
        for path in map(Path, files):
            try:
                loaded[path.name] = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read compose file {path}: {exc.strerror}") from None
    if not loaded:
        raise ConfigError("a compose project needs at least one compose file")
    for name in loaded:
        _check(_FILE, name, "compose file name")
        if name == ".env":
            raise ConfigError("pass the .env values as env=..., not as a compose file")
    return loaded


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- up ----------------------------------------------------------------------------------


class ComposeUpTask(Task):
    """The project's files are in place and its services run as the files say."""

    kind = "compose up"

    def __init__(self, project: str, files: ComposeFiles, env: Mapping[str, EnvValue],
                 services: Sequence[str] | None = None, *, remove_orphans: bool = True,
                 timeout: float = 300.0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.project = project
        self.directory = project_dir(project)
        self.files = _load_files(files)
        self.env = env_file(env)
        self._env_secrets = [v for v in env.values() if isinstance(v, Secret)]
        self.services = [_check(_SERVICE, s, "service name") for s in services or ()]
        self.remove_orphans = remove_orphans and not services
        self.timeout = timeout

    def target(self) -> str:
        return self.project + (f" ({', '.join(self.services)})" if self.services else "")

    @property
    def secrets(self) -> Sequence[Secret]:
        return [self.env, *self._env_secrets]

    def _paths(self) -> dict[str, bytes]:
        env = self.env.reveal().encode()
        return {**{f"{self.directory}/{n}": c for n, c in self.files.items()},
                f"{self.directory}/.env": env}

    def probe_script(self) -> str:
        sums = "; ".join(
            f"printf 'sum %s %s\\n' {quote(p)} \"$(sha256sum < {quote(p)} 2>/dev/null "
            f"| cut -c1-64)\"" for p in self._paths())
        hashes = _either(self.project, list(self.files), "config", "--hash", "*",
                         tail=" 2>/dev/null | sed 's/^/hash /'")
        return (f"{sums}\n{FLAVOUR_SCRIPT}\n"
                f"if [ -d {quote(self.directory)} ]; then {hashes}; fi\n"
                f"{_containers_script(self.project)}\n"
                "docker images --no-trunc --format 'img {{.Repository}}:{{.Tag}} {{.ID}}' "
                "2>/dev/null")

    def parse(self, output: str) -> Facts:
        sums: dict[str, str | None] = {}
        hashes: dict[str, str] = {}
        for line in output.splitlines():
            if line.startswith("sum "):
                _, path, *digest = line.split(" ")
                sums[path] = digest[0] if digest and digest[0] else None
            elif line.startswith("hash "):
                parts = line.split()
                if len(parts) == 3:
                    hashes[parts[1]] = parts[2]
        return {"flavour": _field(output, "flavour"), "sums": sums, "hashes": hashes,
                "images": service_images(self.files, self.env),
                "image_ids": _parse_image_ids(output),
                "containers": _parse_containers(output)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if facts["flavour"] not in FLAVOURS:
            raise _no_compose(conn)
        for path, content in self._paths().items():
            if facts["sums"].get(path) != _sha(content):
                shown = "(secret)" if path.endswith("/.env") else path
                plan.add(f"file {path.rsplit('/', 1)[1]}",
                         "absent" if facts["sums"].get(path) is None else "differs",
                         "as given" if shown == path else "as given (secret)")
        if plan:
            return plan  # the hashes on the host describe the old files
        hashes: dict[str, str] = facts["hashes"]
        wanted = self.services or sorted(hashes)
        unknown = [s for s in wanted if s not in hashes]
        if unknown:
            raise TaskError(f"compose project {self.project} has no service {unknown[0]!r}; "
                            f"services: {', '.join(sorted(hashes)) or '(none)'}",
                            host=conn.name)
        containers: list[Container] = facts["containers"]
        for service in wanted:
            mine = [c for c in containers if c.service == service]
            if not mine:
                plan.add(f"service {service}", "absent", "running")
                continue
            image = facts["images"].get(service)
            current_id = facts["image_ids"].get(_normal_image(image)) if image else None
            for c in mine:
                if c.config_hash != hashes[service]:
                    plan.add(f"service {service} config", c.config_hash[:12],
                             hashes[service][:12])
                elif current_id and c.image_id != current_id:
                    plan.add(f"service {service} image", c.image_id[7:19], current_id[7:19])
                elif c.state != "running":
                    plan.add(f"service {service}", c.state, "running")
        if self.remove_orphans:
            for c in containers:
                if c.service not in hashes:
                    plan.add(f"orphan {c.service}", c.state, "removed")
        return plan

    def _run(self, conn: Connection, flavour: Flavour, *args: str) -> None:
        conn.run(command(flavour, self.project, list(self.files), *args),
                 timeout=self.timeout, task=self.name)

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        flavour: Flavour = facts["flavour"]
        previous = {p: conn.get(p) for p, digest in facts["sums"].items() if digest}
        had = bool(facts["containers"])
        conn.run(["mkdir", "-p", "-m", "700", self.directory], task=self.name)
        for path, content in self._paths().items():
            conn.put(content, path, mode=0o600 if path.endswith("/.env") else 0o644)

        def back(c: Connection) -> None:
            for path in self._paths():
                if path in previous:
                    c.put(previous[path], path)
                else:
                    c.run(["rm", "-f", path])
            if had and previous:
                self._run(c, flavour, "up", "-d", "--remove-orphans")
            elif previous:
                self._run(c, flavour, "down", "--remove-orphans")
            else:
                c.run(f"{_containers_script(self.project)} >/dev/null; "
                      f"[ -z \"$ids\" ] || docker rm -f $ids >/dev/null; "
                      f"rm -rf {quote(self.directory)}")

        undo.push(f"compose project {self.project} back as it was", back)
        args = ["up", "-d"]
        if self.remove_orphans:
            args.append("--remove-orphans")
        if self.services:
            args += ["--no-deps", *self.services]
        self._run(conn, flavour, *args)


_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def service_images(files: Mapping[str, bytes], env: Secret) -> dict[str, str]:
    """Service -> image name, from the compose files with ``${VAR}``/``${VAR:-default}``
    taken from the .env text (so the probe needs no second compose run); services whose
    image cannot be resolved here are left out (v1's config hash covers their image)."""
    values = dict(line.split("=", 1) for line in env.reveal().splitlines() if "=" in line)
    images: dict[str, str] = {}
    for content in files.values():
        try:
            data = yaml.safe_load(content)
        except yaml.YAMLError:
            continue
        services = data.get("services") if isinstance(data, dict) else None
        for service, spec in (services or {}).items():
            image = spec.get("image") if isinstance(spec, dict) else None
            if not isinstance(image, str):
                continue
            unresolved = False

            def sub(m: re.Match[str]) -> str:
                nonlocal unresolved
                name = m.group(1) or m.group(3)
                if name in values:
                    return values[name]
                if m.group(2) is not None:
                    return m.group(2)
                unresolved = True
                return ""
            resolved = _VAR.sub(sub, image)
            if not unresolved and resolved:
                images[str(service)] = resolved
    return images


def _normal_image(image: str) -> str:
    """``name`` -> ``name:latest`` (how ``docker images`` lists it)."""
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in image else f"{image}:latest"


def up(project: str, files: ComposeFiles, env: Mapping[str, EnvValue] | None = None,
       services: Sequence[str] | None = None, *, remove_orphans: bool = True,
       timeout: float = 300.0, name: str | None = None) -> ComposeUpTask:
    """The project's files (a mapping ``file name -> content`` or local paths) and ``.env``
    (from ``env``, mode 0600) are in ``/srv/compose/<project>``, and its services (all, or
    ``services`` only, started without their dependencies) run as configured.

    ``ok`` when files, config hashes and image ids match and every container runs;
    otherwise ``compose up -d`` recreates what changed. Undo puts the old files back
    and the project as it was (or removes it when it was new).
    """
    return ComposeUpTask(project, files, env or {}, services, remove_orphans=remove_orphans,
                         timeout=timeout, name=name)


# -- down --------------------------------------------------------------------------------


class ComposeDownTask(Task):
    """The project has no containers (its files stay, for a later ``up``)."""

    kind = "compose down"

    def __init__(self, project: str, *, timeout: float = 120.0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.project = project
        self.directory = project_dir(project)
        self.timeout = timeout

    def target(self) -> str:
        return self.project

    def probe_script(self) -> str:
        return _containers_script(self.project)

    def parse(self, output: str) -> Facts:
        return {"containers": _parse_containers(output)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        containers: list[Container] = facts["containers"]
        if containers:
            plan.add("containers", ", ".join(f"{c.service} {c.state}" for c in containers),
                     "none")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        # by label, not through compose: works whatever the files on the host say now
        ids = [c.id for c in facts["containers"]]
        conn.run(["docker", "rm", "--force", "--volumes", *ids], timeout=self.timeout,
                 task=self.name)


def down(project: str, *, timeout: float = 120.0, name: str | None = None) -> ComposeDownTask:
    """Remove the project's containers (its files and images stay, for rollback)."""
    return ComposeDownTask(project, timeout=timeout, name=name)


# -- pull --------------------------------------------------------------------------------


class ComposePullTask(Task):
    """``compose pull``: changed when an image id moved, ok when the registry had nothing
    new. It cannot know without pulling, so check mode says it would pull."""

    kind = "compose pull"

    def __init__(self, project: str, files: Sequence[str] = ("docker-compose.yml",),
                 services: Sequence[str] | None = None, *, timeout: float = 900.0,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.project = project
        project_dir(project)
        self.file_names = [_check(_FILE, f, "compose file name") for f in files]
        self.services = [_check(_SERVICE, s, "service name") for s in services or ()]
        self.timeout = timeout

    def target(self) -> str:
        return self.project

    def probe_script(self) -> str:
        images = _either(self.project, self.file_names, "config", "--images",
                         tail=" 2>/dev/null | sed 's/^/image /'")
        return (f"{FLAVOUR_SCRIPT}\n{images}\ndocker images --no-trunc --format "
                "'img {{.Repository}}:{{.Tag}} {{.ID}}' 2>/dev/null")

    def parse(self, output: str) -> Facts:
        images = [line.split()[1] for line in output.splitlines()
                  if line.startswith("image ") and len(line.split()) == 2]
        ids = _parse_image_ids(output)
        return {"flavour": _field(output, "flavour"),
                "ids": {i: ids.get(_normal_image(i)) for i in images}}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        if facts["flavour"] not in FLAVOURS:
            raise _no_compose(conn)
        plan = Plan()
        plan.add("images", "as on the host", "as in the registry")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        conn.run(command(facts["flavour"], self.project, self.file_names, "pull",
                         *self.services), timeout=self.timeout, task=self.name)
        self._before = facts["ids"]

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        return Plan()

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """As :meth:`Task.run`, then ``ok`` when no image id moved."""
        result = super().run(conn, check=check, facts=facts, undo=undo)
        if result.changed and not check:
            after = self.parse(conn.run(self.probe_script(), write=False,
                                        check=False).stdout)["ids"]
            if after == getattr(self, "_before", None):
                result.status, result.diff = Status.OK, ""
        return result


def pull(project: str, files: Sequence[str] = ("docker-compose.yml",),
         services: Sequence[str] | None = None, *, timeout: float = 900.0,
         name: str | None = None) -> ComposePullTask:
    """Pull the project's images from their registry (``ok`` when none changed)."""
    return ComposePullTask(project, files, services, timeout=timeout, name=name)


# -- health ------------------------------------------------------------------------------


class WaitHealthyTask(Task):
    """Every container of the listed services runs and is healthy (or has no healthcheck).

    One command on the host polls ``docker inspect`` until then, until one turns
    ``unhealthy`` or exits, or ``timeout``; the failure names the services and has the
    last log lines of each unhealthy container. Reads only: ``ok`` or ``failed``.
    """

    kind = "compose healthy"

    def __init__(self, project: str, services: Sequence[str] | None = None, *,
                 timeout: float = 60.0, interval: float = 0.5, log_lines: int = LOG_LINES,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.project = project
        project_dir(project)
        self.services = [_check(_SERVICE, s, "service name") for s in services or ()]
        self.timeout = timeout
        self.interval = interval
        self.log_lines = log_lines

    def target(self) -> str:
        return self.project + (f" ({', '.join(self.services)})" if self.services else "")

    def probe_script(self) -> str:
        return ":"

    def parse(self, output: str) -> Facts:
        return {"containers": _parse_containers(output)}

    def _verdict(self, containers: Sequence[Container]) -> tuple[str, list[Container]]:
        """``healthy``, ``waiting`` or ``failed``, and the containers in the way."""
        mine = [c for c in containers if not self.services or c.service in self.services]
        missing = [s for s in self.services if s not in {c.service for c in mine}]
        if not mine or missing:
            return "waiting", []
        bad = [c for c in mine if c.health == "unhealthy" or c.state in ("exited", "dead")]
        if bad:
            return "failed", bad
        slow = [c for c in mine if not c.healthy]
        return ("waiting", slow) if slow else ("healthy", [])

    def probe(self, conn: Connection) -> Facts:
        """Poll on the host (one command) until healthy, failed or timed out."""
        script = (f"end=$(($(date +%s) + {max(1, int(self.timeout + 0.999))})); "
                  f"while :; do out=$({_containers_script(self.project)}); "
                  f"[ \"$(echo \"$out\" | {self._verdict_awk()})\" != waiting ] && break; "
                  "[ $(date +%s) -ge $end ] && break; "
                  f"sleep {self.interval:g}; done; echo \"$out\"")
        out = conn.run(script, write=False, check=False, timeout=self.timeout + 30,
                       task=self.name).stdout
        return self.parse(out)

    def _verdict_awk(self) -> str:
        """awk printing :meth:`_verdict` on the host (``healthy``, ``waiting``, ``failed``),
        over the listed services' containers only (another service's unhealthy container
        is not theirs to wait on)."""
        want = " ".join(quote(s) for s in self.services)
        return ("awk -F'|' -v want=" + quote(want)
                + " 'BEGIN { n = split(want, w, \" \"); for (i = 1; i <= n; i++) need[w[i]] = 1 }"
                " /^ctr / { s = substr($1, 5); if (n && !(s in need)) next; seen[s] = 1; m++;"
                " if ($4 == \"unhealthy\" || $3 == \"exited\" || $3 == \"dead\") bad = 1;"
                " else if ($3 != \"running\" || ($4 != \"healthy\" && $4 != \"none\")) slow = 1 }"
                " END { for (s in need) if (!(s in seen)) slow = 1;"
                " print bad ? \"failed\" : (slow || !m) ? \"waiting\" : \"healthy\" }'")

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        verdict, culprits = self._verdict(facts["containers"])
        if verdict == "healthy":
            return Plan()
        if not culprits:
            raise TaskError(f"compose project {self.project}: no container for "
                            f"{', '.join(self.services) or 'any service'} after "
                            f"{self.timeout:g} s", host=conn.name, task=self.name)
        what = ", ".join(f"{c.service} {c.health if c.state == 'running' else c.state}"
                         for c in culprits)
        how = "failed" if verdict == "failed" else f"not healthy after {self.timeout:g} s"
        raise TaskError(f"compose project {self.project}: {how}: {what}\n"
                        + _logs_tail(conn, culprits, self.log_lines),
                        host=conn.name, task=self.name)

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise AssertionError("a health wait has no plan to apply")


def wait_healthy(project: str, services: Sequence[str] | None = None, *, timeout: float = 60.0,
                 interval: float = 0.5, log_lines: int = LOG_LINES,
                 name: str | None = None) -> WaitHealthyTask:
    """Wait until the services' containers are healthy; fail at the first unhealthy or
    exited one (or at ``timeout``) with the last ``log_lines`` of its logs."""
    return WaitHealthyTask(project, services, timeout=timeout, interval=interval,
                           log_lines=log_lines, name=name)


# -- images: sources, streaming ----------------------------------------------------------


class ImageSource(Protocol):
    """Where :func:`push_image` reads an image: its id, and a gzipped ``docker save``."""

    name: str

    def image_id(self, image: str) -> str | None:
        """The image's id at the source, or None when it has no such image."""

    def save(self, image: str) -> Iterator[bytes]:
        """``docker save image | gzip`` as chunks; raises TaskError when it fails."""


class LocalDocker:
    """The controller's own docker (``DOCKER_HOST`` from ``env`` when given)."""

    def __init__(self, docker: str = "docker", env: Mapping[str, str] | None = None) -> None:
        self.docker = docker
        self.env = dict(env) if env is not None else None
        self.name = "controller"

    def _environ(self) -> dict[str, str] | None:
        if self.env is None:
            return None
        import os
        return {**os.environ, **self.env}

    def image_id(self, image: str) -> str | None:
        """``docker image inspect`` on the controller."""
        proc = subprocess.run([self.docker, "image", "inspect", "-f", "{{.Id}}", image],
                              capture_output=True, text=True, env=self._environ(), check=False)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def save(self, image: str) -> Iterator[bytes]:
        """``docker save`` piped through gzip -1, read in chunks."""
        proc = subprocess.Popen([self.docker, "save", image], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self._environ())
        assert proc.stdout is not None and proc.stderr is not None
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
        try:
            while chunk := proc.stdout.read(CHUNK):
                if out := packer.compress(chunk):
                    yield out
            yield packer.flush()
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise TaskError(f"docker save {image} failed on the controller: {err}")


class HostDocker:
    """A build host's docker, read over its SSH connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = conn.name

    def image_id(self, image: str) -> str | None:
        """``docker image inspect`` on the build host (one round trip)."""
        return image_ids(self.conn, [image])[image]

    def save(self, image: str) -> Iterator[bytes]:
        """``docker save image | gzip -1`` on the build host, streamed back."""
        script = (f"set -o pipefail 2>/dev/null; docker save {quote(image)} | gzip -1")
        try:
            yield from self.conn.stream(f"bash -c {quote(script)}", chunk_size=CHUNK)
        except RemoteCommandError as exc:
            raise TaskError(f"docker save of {image} on {self.name} failed: {exc.message}",
                            host=self.name) from None


def _stream_in(conn: Connection, script: str, chunks: Iterator[bytes], timeout: float
               ) -> tuple[int, str, int]:
    """Run ``script`` on the host with ``chunks`` as its stdin; (exit code, output, bytes)."""
    chan = conn.open_channel(script)
    sent = 0
    out = io.BytesIO()
    started = time.monotonic()
    try:
        for chunk in chunks:
            chan.sendall(chunk)
            sent += len(chunk)
            while chan.recv_ready():
                out.write(chan.recv(CHUNK))
            while chan.recv_stderr_ready():
                out.write(chan.recv_stderr(CHUNK))
            if time.monotonic() - started > timeout:
                raise TaskError(f"image transfer to {conn.name} took over {timeout:g} s",
                                host=conn.name)
        chan.shutdown_write()
        while not (chan.eof_received and chan.exit_status_ready()):
            select.select([chan], [], [], 1.0)
            while chan.recv_ready():
                out.write(chan.recv(CHUNK))
            while chan.recv_stderr_ready():
                out.write(chan.recv_stderr(CHUNK))
        code = chan.recv_exit_status()
        while chan.recv_ready():
            out.write(chan.recv(CHUNK))
        while chan.recv_stderr_ready():
            out.write(chan.recv_stderr(CHUNK))
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ConnectError(f"connection to {conn.name} lost while loading an image: {exc}",
                           host=conn.name) from None
    finally:
        chan.close()
    conn.log.append(LoggedCommand(script, True, code))
    return code, out.getvalue().decode(errors="replace"), sent


class PushImageTask(Task):
    """The host has ``image`` with the source's image id; else it is streamed there."""

    kind = "push image"

    def __init__(self, image: str, source: ImageSource, *, timeout: float = 900.0,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.image = _check(_IMAGE, image, "image name")
        self.source = source
        self.timeout = timeout
        self._id: str | None = None
        self._lock = threading.Lock()

    def target(self) -> str:
        return self.image

    def source_id(self) -> str:
        """The image's id at the source (read once per task, for every host)."""
        with self._lock:
            if self._id is None:
                found = self.source.image_id(self.image)
                if not found:
                    raise TaskError(f"image {self.image} does not exist on "
                                    f"{self.source.name}; build it there first")
                self._id = found
            return self._id

    def probe_script(self) -> str:
        return _image_ids_script([self.image])

    def parse(self, output: str) -> Facts:
        return {"id": _parse_image_ids(output).get(self.image)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        want = self.source_id()
        if facts["id"] != want:
            plan.add("image id", facts["id"][7:19] if facts["id"] else None, want[7:19])
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        started = time.monotonic()
        code, out, sent = _stream_in(conn, "gunzip | docker load", self.source.save(self.image),
                                     self.timeout)
        if code != 0:
            raise TaskError(f"docker load of {self.image} failed (exit {code}): "
                            f"{out.strip()[-1000:]}", host=conn.name, task=self.name)
        self.sent = {**getattr(self, "sent", {}), conn.name: sent}
        self.seconds = time.monotonic() - started


def push_image(image: str, source: ImageSource, *, timeout: float = 900.0,
               name: str | None = None) -> PushImageTask:
    """Ship ``image`` from ``source`` to the host: ``docker save | gzip`` streamed over SSH
    into ``docker load``; ``ok`` and nothing sent when the host has the same image id."""
    return PushImageTask(image, source, timeout=timeout, name=name)


# -- build and prune ---------------------------------------------------------------------


class BuildTask(Task):
    """``image`` is built on the host from ``context`` (a directory there); ``ok`` when
    the image exists and carries the context's checksum label."""

    kind = "docker build"

    def __init__(self, image: str, context: str, *, dockerfile: str = "Dockerfile",
                 build_args: Mapping[str, str] | None = None, timeout: float = 1800.0,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.image = _check(_IMAGE, image, "image name")
        if not context.startswith("/"):
            raise ConfigError(f"build context must be an absolute path on the host, "
                              f"not {context!r}")
        self.context = context
        self.dockerfile = dockerfile
        self.build_args = dict(build_args or {})
        self.timeout = timeout

    def target(self) -> str:
        return self.image

    def _sum_script(self) -> str:
        args = json.dumps(self.build_args, sort_keys=True)
        return (f"(cd {quote(self.context)} && find . -type f ! -name '.*' -print0 | sort -z "
                f"| xargs -0 sha256sum; printf '%s' {quote(args)}) 2>/dev/null | sha256sum "
                "| cut -c1-64")

    def probe_script(self) -> str:
        label = quote("{{index .Config.Labels \"deploykit.context\"}}")
        return (f"printf 'want %s\\n' \"$({self._sum_script()})\"; "
                f"printf 'have %s\\n' \"$(docker image inspect -f {label} "
                f"{quote(self.image)} 2>/dev/null)\"")

    def parse(self, output: str) -> Facts:
        return {"want": _field(output, "want"), "have": _field(output, "have")}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if facts["have"] != facts["want"]:
            plan.add("image", facts["have"][:12] or None, facts["want"][:12])
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        argv = ["docker", "build", "--quiet", "--tag", self.image,
                "--label", f"deploykit.context={facts['want']}",
                "--file", f"{self.context}/{self.dockerfile}"]
        for key, value in self.build_args.items():
            argv += ["--build-arg", f"{_check(_ENV_KEY, key, 'build arg')}={value}"]
        conn.run([*argv, self.context], env={"DOCKER_BUILDKIT": "0"}, timeout=self.timeout,
                 task=self.name)


def build(image: str, context: str, *, dockerfile: str = "Dockerfile",
          build_args: Mapping[str, str] | None = None, timeout: float = 1800.0,
          name: str | None = None) -> BuildTask:
    """Build ``image`` on the host from the directory ``context`` (upload it first, e.g.
    with files.copy); rebuilt only when the context's files or build args changed."""
    return BuildTask(image, context, dockerfile=dockerfile, build_args=build_args,
                     timeout=timeout, name=name)


class PruneImagesTask(Task):
    """At most ``keep`` tags of ``repository`` (newest first) stay; the rest are removed,
    except images a container still uses."""

    kind = "prune images"

    def __init__(self, repository: str, keep: int, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.repository = _check(_IMAGE, repository, "image repository")
        if keep < 1:
            raise ConfigError(f"keep must be at least 1, not {keep}")
        self.keep = keep

    def target(self) -> str:
        return self.repository

    def probe_script(self) -> str:
        return (f"docker images --no-trunc --format 'tag {{{{.Tag}}}} {{{{.ID}}}} "
                f"{{{{.CreatedAt}}}}' {quote(self.repository)} 2>/dev/null; "
                "docker ps -a --no-trunc --format 'used {{.Image}}' 2>/dev/null; "
                "for c in $(docker ps -aq 2>/dev/null); do "
                "printf 'used %s\\n' \"$(docker inspect -f '{{.Image}}' $c)\"; done")

    def parse(self, output: str) -> Facts:
        tags = []
        for line in output.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "tag" and len(parts) == 4 and parts[1] != "<none>":
                tags.append((parts[3], parts[1], parts[2]))
        used = {line.split(" ", 1)[1] for line in output.splitlines()
                if line.startswith("used ")}
        tags.sort(reverse=True)  # CreatedAt sorts as text: 2026-11-26 00:10:00 +0000 UTC
        return {"tags": [(t, i) for _, t, i in tags], "used": used}

    def _doomed(self, facts: Facts) -> list[str]:
        used = facts["used"]
        return [t for t, i in facts["tags"][self.keep:]
                if i not in used and f"{self.repository}:{t}" not in used]

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        doomed = self._doomed(facts)
        if doomed:
            plan.add("tags", ", ".join(t for t, _ in facts["tags"]),
                     ", ".join(t for t, _ in facts["tags"] if t not in doomed))
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        conn.run(["docker", "rmi", *(f"{self.repository}:{t}" for t in self._doomed(facts))],
                 task=self.name)


def prune_images(repository: str, keep: int = 3, *, name: str | None = None
                 ) -> PruneImagesTask:
    """Keep the ``keep`` newest tags of ``repository`` (for rollback), remove the rest."""
    return PruneImagesTask(repository, keep, name=name)

