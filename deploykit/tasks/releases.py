"""Release tasks, Capistrano style: install, switch, mark, roll back, clean up.

The layout on a host, for app ``sampleapp`` under ``root="/srv"``::

    /srv/sampleapp/releases/v1/     an unpacked artifact, links to shared/, venv -> envs/...
    /srv/sampleapp/releases/v2/
    /srv/sampleapp/envs/<deps>.<n>/ a virtualenv per dependency set, shared by releases
    /srv/sampleapp/shared/.env      what every release shares (config, uploads, logs)
    /srv/sampleapp/current -> /srv/sampleapp/releases/v2
    /srv/sampleapp/blue    -> /srv/sampleapp/releases/v1    (blue/green: one link per colour)

Typical use::

    from deploykit import artifacts
    from deploykit.tasks import releases

    artifact = artifacts.build("examples/app", app="sampleapp", version="v2", out_dir="dist")
    steps = [releases.install("sampleapp", artifact),        # upload, unpack, venv, shared links
             releases.switch("sampleapp", "v2"),             # current -> releases/v2, atomically
             releases.cleanup("sampleapp", keep=5)]
    ...
    releases.rollback("sampleapp", from_release="v2")       # current -> the previous good one

A release directory is **complete** once its ``.dk-release`` record
(app, release id, version, artifact SHA-256, creation time) is written, the
last step of an install; a directory without one is an interrupted install,
redone by the next :func:`install`. A ``.failed`` file (its first line: the
reason) marks a release **failed**: :func:`rollback` never goes back to it,
:func:`switch` refuses it, and it never counts among the releases
:func:`cleanup` keeps. :func:`list_releases` reads it all in one round trip.

Every task here probes the whole app directory with one read-only command
(``find`` and shell reads: no process per release), and every path and value
is quoted. Undo: :func:`install` removes the release it created, :func:`switch`
and :func:`rollback` point the link back, marks are reverted; removed releases
(:func:`cleanup`) cannot be restored and say so.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deploykit.artifacts import Artifact, check_name
from deploykit.connection import Connection
from deploykit.errors import ConfigError, RemoteCommandError, RollbackError, TaskError
from deploykit.facts import parse_path, path_script
from deploykit.shell import quote
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks import environments
from deploykit.tasks.files import SymlinkTask

__all__ = [
    "AppReleases",
    "CleanupTask",
    "InstallTask",
    "MarkTask",
    "ReleaseInfo",
    "RollbackTask",
    "SwitchTask",
    "cleanup",
    "deploy_steps",
    "install",
    "list_releases",
    "mark_failed",
    "mark_ok",
    "parse_releases",
    "release_dir",
    "releases_script",
    "removable",
    "rollback",
    "switch",
]

DEFAULT_ROOT = "/srv"
RECORD = ".dk-release"
FAILED = ".failed"
DEFAULT_SHARED_FILES = (".env",)
DEFAULT_SHARED_DIRS = ("uploads", "logs")
#: How much of a failed install's output the Result message keeps.
OUTPUT_TAIL = 1500


# -- what is on the host ------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseInfo:
    """One directory under ``<root>/<app>/releases``.

    ``created`` is the install time recorded on the host (epoch seconds), or
    the directory's mtime for an incomplete one; ``links`` names the links in
    the app directory pointing at it (``current``, ``blue``).
    """

    release_id: str
    path: str
    complete: bool
    failed: bool
    created: float
    sha256: str | None = None
    version: str | None = None
    reason: str = ""
    links: tuple[str, ...] = ()

    @property
    def good(self) -> bool:
        """Complete and not marked failed: a release one may switch or roll back to."""
        return self.complete and not self.failed

    @property
    def state(self) -> str:
        """``current`` (the ``current`` link's target), else ``failed``, ``incomplete``
        or ``ok``."""
        if "current" in self.links:
            return "current"
        if self.failed:
            return "failed"
        return "ok" if self.complete else "incomplete"

    @property
    def created_iso(self) -> str:
        """``created`` as ``2026-01-31T12:00:00Z``."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))


@dataclass(frozen=True)
class AppReleases:
    """Everything the release tasks read about one app on one host."""

    app: str
    root: str
    releases: Mapping[str, ReleaseInfo] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)  # link name -> raw target

    @property
    def app_dir(self) -> str:
        """``<root>/<app>``."""
        return f"{self.root}/{self.app}"

    def ordered(self) -> list[ReleaseInfo]:
        """Releases oldest first (by creation time, then id)."""
        return sorted(self.releases.values(), key=lambda r: (r.created, r.release_id))

    def target(self, link: str) -> str | None:
        """The release id ``link`` points at, or None (no link, or not at a release)."""
        raw = self.links.get(link)
        if raw is None:
            return None
        path = posixpath.normpath(posixpath.join(self.app_dir, raw))
        folder, release_id = posixpath.split(path)
        return release_id if folder == f"{self.app_dir}/releases" else None

    def previous_good(self, release_id: str) -> ReleaseInfo | None:
        """The newest good release created before ``release_id``."""
        anchor = self.releases.get(release_id)
        older = [r for r in self.ordered() if r.good and r.release_id != release_id
                 and (anchor is None or (r.created, r.release_id)
                      < (anchor.created, anchor.release_id))]
        return older[-1] if older else None

    def describe(self) -> str:
        """``v2 (current), v1 (failed)`` for messages, newest first."""
        items = [f"{r.release_id} ({r.state})" for r in reversed(self.ordered())]
        return ", ".join(items) or "none"


def app_dir(root: str, app: str) -> str:
    """``<root>/<app>``, validated: ``root`` absolute, ``app`` a plain name."""
    check_name("app", app)
    if not root.startswith("/") or "\n" in root:
        raise ConfigError(f"releases root must be an absolute path, not {root!r}")
    return f"{root.rstrip('/') or ''}/{app}"


def release_dir(app: str, release_id: str, *, root: str = DEFAULT_ROOT) -> str:
    """``<root>/<app>/releases/<release_id>``: where a release lives (e.g. the working
    directory to give its program, so that a new release changes the program's config)."""
    return f"{app_dir(root, app)}/releases/{check_name('release id', release_id)}"


def releases_script(root: str, app: str) -> str:
    """A read-only snippet listing releases, their records and marks, and the app's links."""
    base = quote(app_dir(root, app))
    rel = f"{base}/releases"
    return (
        f"if [ -d {rel} ]; then "
        f"find {rel} -mindepth 1 -maxdepth 1 -type d -printf 'rel %f %T@\\n'; "
        f"for f in {rel}/*/{RECORD}; do [ -f \"$f\" ] || continue; "
        f"n=${{f%/{RECORD}}}; n=${{n##*/}}; "
        f"while IFS= read -r l; do printf 'meta %s %s\\n' \"$n\" \"$l\"; done < \"$f\"; done; "
        f"for f in {rel}/*/{FAILED}; do [ -e \"$f\" ] || continue; "
        f"n=${{f%/{FAILED}}}; n=${{n##*/}}; x=; IFS= read -r x < \"$f\" || :; "
        f"printf 'failed %s %s\\n' \"$n\" \"$x\"; done; fi; "
        f"if [ -d {base} ]; then find {base} -mindepth 1 -maxdepth 1 -type l "
        f"-printf 'link %f %l\\n'; fi"
    )


def parse_releases(output: str, root: str, app: str) -> AppReleases:
    """Parse :func:`releases_script` output (names that are not valid ids are ignored)."""
    found: dict[str, dict[str, Any]] = {}
    links: dict[str, str] = {}
    base = app_dir(root, app)
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        name, _, value = rest.partition(" ")
        if kind == "link":
            links[name] = value
            continue
        try:
            check_name("release id", name)
        except ConfigError:
            continue
        entry = found.setdefault(name, {"meta": {}, "failed": None, "mtime": 0.0})
        if kind == "rel":
            entry["mtime"] = _float(value)
        elif kind == "meta":
            key, _, val = value.partition("=")
            entry["meta"][key] = val
        elif kind == "failed":
            entry["failed"] = value
    by_target: dict[str, list[str]] = {}
    state = AppReleases(app, root.rstrip("/") or "", {}, links)
    for link in sorted(links):
        target = state.target(link)
        if target is not None:
            by_target.setdefault(target, []).append(link)
    releases = {}
    for name, entry in found.items():
        meta = entry["meta"]
        complete = meta.get("release") == name and bool(meta.get("sha256"))
        releases[name] = ReleaseInfo(
            release_id=name, path=f"{base}/releases/{name}", complete=complete,
            failed=entry["failed"] is not None,
            created=_float(meta.get("created")) if complete else entry["mtime"],
            sha256=meta.get("sha256") if complete else None,
            version=meta.get("version") if complete else None,
            reason=entry["failed"] or "", links=tuple(by_target.get(name, ())))
    return AppReleases(app, state.root, releases, links)


def _float(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return 0.0


def list_releases(conn: Connection, app: str, *, root: str = DEFAULT_ROOT) -> list[ReleaseInfo]:
    """The app's releases on ``conn``'s host, newest first (one read-only round trip).

    Each :class:`ReleaseInfo` has the release id, ``state`` (``current``, ``ok``,
    ``failed``, ``incomplete``), the artifact ``sha256``, ``created`` (epoch;
    ``created_iso``) and the ``links`` pointing at it.
    """
    out = conn.run(releases_script(root, app), write=False, check=False,
                   task=f"releases.list {app}").stdout
    return list(reversed(parse_releases(out, root, app).ordered()))


def __getattr__(name: str) -> Callable[..., list[ReleaseInfo]]:
    """``releases.list`` is :func:`list_releases` (not defined under that name, which
    would hide the builtin inside this module)."""
    if name == "list":
        return list_releases
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- sectioned probes ----------------------------------------------------------------


def _sections(parts: Mapping[str, str]) -> str:
    """Several snippets in one probe, each output after a ``@@dk <key>`` line."""
    return "\n".join(f"echo '@@dk {key}'\n( {script}\n)" for key, script in parts.items())


def _split(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@dk "):
            current = sections.setdefault(line[5:], [])
        elif current is not None:
            current.append(line)
    return {key: "\n".join(lines) for key, lines in sections.items()}


class _AppTask(Task):
    """A task reading one app's releases (and optionally more sections) in its probe."""

    def __init__(self, app: str, *, root: str = DEFAULT_ROOT, name: str | None = None) -> None:
        super().__init__(name=name)
        self.app = app
        self.root = root
        self.base = app_dir(root, app)

    def release_path(self, release_id: str) -> str:
        """Where release ``release_id`` of this app lives."""
        return f"{self.base}/releases/{release_id}"

    def extra_probes(self) -> dict[str, str]:
        """More snippets to probe along with the releases, by section name."""
        return {}

    def probe_script(self) -> str:
        return _sections({"releases": releases_script(self.root, self.app),
                          **self.extra_probes()})

    def parse(self, output: str) -> Facts:
        sections = _split(output)
        facts: Facts = {key: sections.get(key, "") for key in self.extra_probes()}
        facts["app"] = parse_releases(sections.get("releases", ""), self.root, self.app)
        return facts

    def error(self, conn: Connection, message: str) -> TaskError:
        """A TaskError about this app on ``conn``'s host."""
        return TaskError(f"{self.app}: {message}", host=conn.name, task=self.name)

    def require(self, conn: Connection, state: AppReleases, release_id: str,
                *, allow_failed: bool = False) -> ReleaseInfo:
        """The complete release ``release_id``; a TaskError naming what is there otherwise."""
        rel = state.releases.get(release_id)
        if rel is None or not rel.complete:
            what = "is not installed" if rel is None else "is an incomplete install"
            raise self.error(conn, f"release {release_id} {what} in {self.base}/releases "
                                   f"(releases: {state.describe()})")
        if rel.failed and not allow_failed:
            raise self.error(conn, f"release {release_id} is marked failed"
                                   f"{f' ({rel.reason})' if rel.reason else ''}; mark it ok "
                                   "with releases.mark_ok, or pass allow_failed=True")
        return rel


def _undo(command: str, task: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        conn.run(command, task=task)
    return run


def _link_task(task: _AppTask, link: str, release_id: str) -> SymlinkTask:
    """``<app_dir>/<link>`` -> ``<app_dir>/releases/<release_id>`` as a
    :class:`SymlinkTask` (atomic ``mv -T``; undo points it back)."""
    return SymlinkTask(f"{task.base}/{link}", task.release_path(release_id), name=task.name)


def _check_link(link: str) -> str:
    check_name("link", link)
    if link in ("releases", "shared"):
        raise ConfigError(f"link {link!r}: 'releases' and 'shared' are the app's directories")
    return link


# -- install ---------------------------------------------------------------------------


def _relative(kind: str, path: str) -> str:
    norm = posixpath.normpath(path)
    if (not path or path.startswith("/") or norm.startswith("..") or norm == "."
            or "\n" in path):
        raise ConfigError(f"{kind} {path!r}: give a path relative to the release directory")
    return norm


class InstallTask(_AppTask):
    """An artifact unpacked as a complete release with its venv. See :func:`install`."""

    kind: ClassVar[str] = "releases.install"

    def __init__(self, app: str, artifact: Artifact, *, release_id: str | None = None,
                 root: str = DEFAULT_ROOT, shared_files: Sequence[str] = DEFAULT_SHARED_FILES,
                 shared_dirs: Sequence[str] = DEFAULT_SHARED_DIRS, python: str = "python3",
                 timeout: float = 600.0, name: str | None = None) -> None:
        super().__init__(app, root=root, name=name)
        self.artifact = artifact
        self.release_id = check_name("release id", release_id or artifact.release_id)
        self.shared_files = tuple(_relative("shared file", p) for p in shared_files)
        self.shared_dirs = tuple(_relative("shared dir", p) for p in shared_dirs)
        self.python = python
        self.timeout = timeout

    def target(self) -> str:
        return f"{self.app} {self.release_id}"

    @property
    def path(self) -> str:
        """The release directory this task installs."""
        return self.release_path(self.release_id)

    @property
    def shared(self) -> tuple[str, ...]:
        """Every shared path linked into the release: files, then directories."""
        return self.shared_files + self.shared_dirs

    def extra_probes(self) -> dict[str, str]:
        lines = []
        for p in self.shared_files:
            lines.append(f"if [ -f {quote(f'{self.base}/shared/{p}')} ]; then "
                         f"printf 'present %s\\n' {quote(p)}; fi")
        for p in self.shared_dirs:
            lines.append(f"if [ -d {quote(f'{self.base}/shared/{p}')} ]; then "
                         f"printf 'present %s\\n' {quote(p)}; fi")
        for p in self.shared:
            link = quote(f"{self.path}/{p}")
            lines.append(f"if [ -L {link} ]; then printf 'link %s ' {quote(p)}; "
                         f"readlink -- {link}; fi")
        if not Path(self.artifact.path).is_file():  # an installed release (a rollback)
            return {"shared": "\n".join(lines) or ":", "env": ":"}
        env = environments.probe_script(self.base, self.dependencies, self.python)
        return {"shared": "\n".join(lines) or ":",
                "env": f"if [ ! -f {quote(f'{self.path}/{RECORD}')} ]; then\n{env}\nfi"}

    @property
    def dependencies(self) -> str:
        """The artifact's dependency hash (requirements and wheels; see
        :mod:`deploykit.tasks.environments`)."""
        return environments.dependency_hash(self.artifact)

    def parse(self, output: str) -> Facts:
        facts = super().parse(output)
        present, links = set(), {}
        for line in facts["shared"].splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "present":
                present.add(rest)
            elif kind == "link":
                path, _, target = rest.partition(" ")
                links[path] = target
        facts["present"], facts["links"] = present, links
        env = dict(line.split(" ", 1) for line in facts["env"].splitlines() if " " in line)
        facts["env_key"], facts["env_ok"] = env.get("env-key"), env.get("env-ok")
        return facts

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        state: AppReleases = facts["app"]
        rel = state.releases.get(self.release_id)
        plan = Plan()
        want = f"{self.release_id} (sha256:{self.artifact.sha256[:12]}, {self.artifact.size} bytes)"
        if rel is None or not rel.complete:
            plan.add("release", None if rel is None else "incomplete install", want)
            key = facts.get("env_key")
            plan.add("environment", None,
                     f"{facts['env_ok']} (reused)" if facts.get("env_ok")
                     else f"{self.base}/{environments.ENVS}/{key} (new)" if key else "(new)")
        elif rel.sha256 != self.artifact.sha256:
            raise self.error(conn, f"release {self.release_id} is already installed from "
                                   f"another artifact (sha256:{(rel.sha256 or '')[:12]}, this "
                                   f"one sha256:{self.artifact.sha256[:12]}); give this build "
                                   "another release id")
        else:
            links: dict[str, str] = facts["links"]
            for p in self.shared:
                if links.get(p) != f"{self.base}/shared/{p}":
                    plan.add(f"link {p}", links.get(p), f"{self.base}/shared/{p}")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        payload = None
        if plan.has("release"):
            try:  # first of all: the bytes checked are the bytes uploaded
                payload = self.artifact.read_verified()
            except ConfigError as exc:
                raise self.error(conn, exc.message) from None
        missing = [p for p in self.shared_files if p not in facts["present"]]
        if missing:
            raise self.error(conn, "shared file(s) missing: " + ", ".join(
                f"{self.base}/shared/{p}" for p in missing) + "; create them before installing "
                "(e.g. files.file for the .env)")
        if payload is None:
            undo.push(f"restore the shared links of {self.path}",
                      _undo(self._link_script(facts["links"]), self.name))
            conn.run(self._link_script(), task=self.name)
            return
        self._install(conn, payload, facts["present"], undo)

    def _link_script(self, old: Mapping[str, str] | None = None) -> str:
        """Link each shared path into the release (``old``: put these targets back)."""
        lines = ["set -e"]
        for p in self.shared:
            inside = quote(f"{self.path}/{p}")
            if old is not None:
                target = old.get(p)
                lines.append(f"rm -rf -- {inside}" if target is None
                             else f"ln -sfn -- {quote(target)} {inside}")
                continue
            lines.append(f"mkdir -p -- \"$(dirname -- {inside})\"; rm -rf -- {inside}; "
                         f"ln -s -- {quote(f'{self.base}/shared/{p}')} {inside}")
        return "\n".join(lines)

    def _install(self, conn: Connection, payload: bytes, present: set[str],
                 undo: UndoStack) -> None:
        rel, tarball = quote(self.path), quote(f"{self.base}/releases/.{self.release_id}.tar.gz")
        shared_dirs = " ".join(quote(f"{self.base}/shared/{p}") for p in self.shared_dirs)
        new_dirs = [quote(f"{self.base}/shared/{p}") for p in self.shared_dirs
                    if p not in present]
        # shared directories this install creates go too, unless something was put in them
        forget = "".join(f"; rmdir -- {d} 2>/dev/null || :" for d in new_dirs)
        undo.push(f"remove release {self.path}",
                  _undo(f"rm -rf -- {rel} {tarball}{forget}", self.name))
        conn.run(f"rm -rf -- {rel} && mkdir -p -- {quote(self.base + '/releases')} "
                 f"{shared_dirs}", task=self.name)
        conn.put(payload, f"{self.base}/releases/.{self.release_id}.tar.gz", mode=0o600)
        record = "".join(f"{k}={v}\\n" for k, v in (
            ("app", self.app), ("release", self.release_id), ("version", self.artifact.version),
            ("sha256", self.artifact.sha256)))
        script = "\n".join([
            "set -e",
            "building=",  # a failed install leaves nothing, a half-built environment neither
            f"trap 'rm -rf -- {rel} {tarball}; [ -z \"$building\" ] || rm -rf -- \"$building\"' "
            "EXIT",
            f"mkdir -- {rel}",
            f"tar -xzf {tarball} -C {rel} --no-same-owner",
            f"cd {rel}",
            environments.ensure_script(self.base, self.dependencies, self.python,
                                       lock_timeout=self.timeout),
            self._link_script(),
            f"printf '{record}created=%s\\n' \"$(date +%s.%N)\" > {RECORD}.tmp",
            f"mv -f -- {RECORD}.tmp {RECORD}",
            f"rm -f -- {tarball}",
            "trap - EXIT",
        ])
        try:
            conn.run(script, task=self.name, timeout=self.timeout)
        except RemoteCommandError as exc:
            output = (exc.stdout + exc.stderr).strip()
            tail = output[-OUTPUT_TAIL:]
            raise self.error(conn, f"installing release {self.release_id} in {self.path} "
                                   f"failed (exit code {exc.exit_code}); nothing was left "
                                   f"behind. Output:\n{tail}") from None


def install(
    app: str,
    artifact: Artifact,
    *,
    release_id: str | None = None,
    root: str = DEFAULT_ROOT,
    shared_files: Sequence[str] = DEFAULT_SHARED_FILES,
    shared_dirs: Sequence[str] = DEFAULT_SHARED_DIRS,
    python: str = "python3",
    timeout: float = 600.0,
    name: str | None = None,
) -> InstallTask:
    """Install ``artifact`` as ``<root>/<app>/releases/<release_id>``.

    Uploads the tarball (checked by SHA-256 on the host), unpacks it, links its
    ``venv`` to the environment of its dependency set (requirements, wheel
    hashes, the host's Python), building that environment from the bundled
    wheels first only when the host has no sound one (no network; see
    :mod:`deploykit.tasks.environments`), links each shared path to
    ``<root>/<app>/shared/<path>``, and last writes the release record (with
    the artifact's SHA-256 and the install time).

    Args:
        app: the app's name (``/srv/<app>``).
        artifact: from :func:`deploykit.artifacts.build` (or ``Artifact.from_file``).
        release_id: the release directory's name (default: the artifact's version).
        root: where apps live (``/srv``).
        shared_files: files every release links from ``shared/``; they must
            exist there before the install (write the ``.env`` first).
        shared_dirs: directories linked from ``shared/``, created when missing
            (set their owner with ``files.directory`` if the app writes there).
        python: the host's interpreter for the venv.
        timeout: seconds the unpack and venv install may take.
        name: the step's name in reports (default ``releases.install <app> <id>``).

    Idempotence: ``ok`` and **no upload** when the release is complete with
    the same artifact SHA-256 and its shared links are right (a wrong link
    alone is fixed). The same release id from another artifact is an error,
    never overwritten. An interrupted install (no record) is redone.
    Failure: a failed unpack or pip install removes the new release directory
    and reports the end of the output.
    Check mode: ``release: (none) -> v2 (sha256:..., N bytes)`` and
    ``environment: (none) -> /srv/app/envs/<key>.<n> (reused)`` (or ``<key> (new)``).
    Undo: removes the release directory this task created, and the shared
    directories it created while they are still empty (an environment it built
    stays until :func:`cleanup` finds no release using it).
    """
    return InstallTask(app, artifact, release_id=release_id, root=root,
                       shared_files=shared_files, shared_dirs=shared_dirs, python=python,
                       timeout=timeout, name=name)


# -- switch -------------------------------------------------------------------------


class SwitchTask(_AppTask):
    """A link in the app directory points at a release. See :func:`switch`."""

    kind: ClassVar[str] = "releases.switch"

    def __init__(self, app: str, release_id: str, *, link: str = "current",
                 root: str = DEFAULT_ROOT, allow_failed: bool = False,
                 name: str | None = None) -> None:
        super().__init__(app, root=root, name=name)
        self.release_id = check_name("release id", release_id)
        self.link = _check_link(link)
        self.allow_failed = allow_failed
        self.symlink = _link_task(self, self.link, self.release_id)

    def target(self) -> str:
        return f"{self.app} {self.link} -> {self.release_id}"

    def extra_probes(self) -> dict[str, str]:
        return {"link": self.symlink.probe_script()}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        self.require(conn, facts["app"], self.release_id, allow_failed=self.allow_failed)
        return self.symlink.plan(conn, {"path": parse_path(facts["link"])})

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        self.symlink.apply(conn, {"path": parse_path(facts["link"])}, plan, undo)


def switch(app: str, release_id: str, *, link: str = "current", root: str = DEFAULT_ROOT,
           allow_failed: bool = False, name: str | None = None) -> SwitchTask:
    """Point ``<root>/<app>/<link>`` at ``releases/<release_id>``, atomically.

    Args:
        app: the app's name.
        release_id: a complete, installed release.
        link: the link's name: ``current`` (default), or a colour (``blue``,
            ``green``) for blue/green, where each colour's program runs from
            its own link.
        allow_failed: switch to a release marked failed too (default: refuse).
        name: the step's name in reports.

    The new link is made under a temporary name and renamed over the old one
    (``mv -T``): readers see the old release or the new one, never no link.
    Idempotence: ``ok`` when the link already points there.
    Check mode: ``target: /srv/app/releases/v1 -> /srv/app/releases/v2``.
    Undo: points the link back at its previous target (or removes a new link).
    """
    return SwitchTask(app, release_id, link=link, root=root, allow_failed=allow_failed,
                      name=name)


# -- marks ----------------------------------------------------------------------------


class MarkTask(_AppTask):
    """A release is marked failed (``.failed``) or not. See :func:`mark_failed`."""

    kind: ClassVar[str] = "releases.mark"

    def __init__(self, app: str, release_id: str, *, failed: bool, reason: str = "",
                 root: str = DEFAULT_ROOT, name: str | None = None) -> None:
        super().__init__(app, root=root, name=name)
        self.release_id = check_name("release id", release_id)
        self.failed = failed
        self.reason = " ".join(reason.split())

    def target(self) -> str:
        return f"{self.app} {self.release_id} {'failed' if self.failed else 'ok'}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        rel = self.require(conn, facts["app"], self.release_id, allow_failed=True)
        plan = Plan()
        if rel.failed != self.failed:
            plan.add("state", "failed" if rel.failed else "ok",
                     "failed" if self.failed else "ok")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        rel: ReleaseInfo = facts["app"].releases[self.release_id]
        marker = f"{rel.path}/{FAILED}"
        if self.failed:
            undo.push(f"unmark release {self.release_id}",
                      _undo(f"rm -f -- {quote(marker)}", self.name))
        else:
            undo.push(f"mark release {self.release_id} failed again",
                      _undo(mark_command(marker, rel.reason), self.name))
        conn.run(mark_command(marker, self.reason) if self.failed
                 else f"rm -f -- {quote(marker)}", task=self.name)


def mark_command(marker: str, reason: str) -> str:
    """Write a ``.failed`` marker whose first line is ``reason`` and a UTC time."""
    return (f"printf '%s\\n' {quote(reason or 'marked failed')} "
            f"\"at $(date -u +%Y-%m-%dT%H:%M:%SZ)\" > {quote(marker)}")


def mark_failed(app: str, release_id: str, *, reason: str = "", root: str = DEFAULT_ROOT,
                name: str | None = None) -> MarkTask:
    """Mark a release failed: it is never rolled back to, switched to (unless
    ``allow_failed``) or counted by :func:`cleanup`.

    ``reason`` (one line) becomes the first line of ``releases/<id>/.failed``
    and shows in :func:`list_releases`. Idempotent: ``ok`` when already marked
    (the reason is not compared). Undo: removes the mark.
    """
    return MarkTask(app, release_id, failed=True, reason=reason, root=root, name=name)


def mark_ok(app: str, release_id: str, *, root: str = DEFAULT_ROOT,
            name: str | None = None) -> MarkTask:
    """Remove a release's failed mark. Idempotent; undo marks it failed again."""
    return MarkTask(app, release_id, failed=False, root=root, name=name)


# -- rollback ---------------------------------------------------------------------------


_TARGET = "_rollback_to"


class RollbackTask(_AppTask):
    """The link moves back to the previous good release. See :func:`rollback`."""

    kind: ClassVar[str] = "releases.rollback"

    def __init__(self, app: str, *, link: str = "current", from_release: str | None = None,
                 mark: bool = True, root: str = DEFAULT_ROOT, name: str | None = None) -> None:
        super().__init__(app, root=root, name=name)
        self.link = _check_link(link)
        self.from_release = (None if from_release is None
                             else check_name("release id", from_release))
        self.mark = mark

    def target(self) -> str:
        return f"{self.app} {self.link}"

    def extra_probes(self) -> dict[str, str]:
        return {"link": path_script(f"{self.base}/{self.link}", checksum=False)}

    def choose(self, conn: Connection, state: AppReleases) -> tuple[str, ReleaseInfo] | None:
        """``(release to leave, release to go to)``, or None when there is nothing to do."""
        current = state.target(self.link)
        if current is None:
            raise self.error(conn, f"{self.base}/{self.link} does not point at a release: "
                                   "nothing to roll back")
        if self.from_release is not None and current != self.from_release:
            return None
        previous = state.previous_good(current)
        if previous is None:
            raise self.error(conn, f"no good release before {current} to roll back to "
                                   f"(releases: {state.describe()})")
        return current, previous

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        state: AppReleases = facts["app"]
        chosen = self.choose(conn, state)
        if chosen is None:
            return Plan()
        leaving, previous = chosen
        plan = _link_task(self, self.link, previous.release_id).plan(
            conn, {"path": parse_path(facts["link"])})
        if self.mark and not state.releases[leaving].failed:
            plan.add(f"release {leaving}", "ok", "failed")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        chosen = self.choose(conn, facts["app"])
        assert chosen is not None
        leaving, previous = chosen
        facts[_TARGET] = (leaving, previous.release_id)
        if plan.has(f"release {leaving}"):
            MarkTask(self.app, leaving, failed=True, reason=f"rolled back to {previous.release_id}",
                     root=self.root, name=self.name).apply(conn, facts, plan, undo)
        _link_task(self, self.link, previous.release_id).apply(
            conn, {"path": parse_path(facts["link"])}, plan, undo)

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Rolling back again would step further back: check the outcome instead."""
        leaving, wanted = facts[_TARGET]
        state: AppReleases = self.probe(conn)["app"]
        plan = Plan()
        if state.target(self.link) != wanted:
            plan.add(self.link, state.target(self.link), wanted)
        if self.mark and not state.releases[leaving].failed:
            plan.add(f"release {leaving}", "ok", "failed")
        return plan


def rollback(app: str, *, link: str = "current", from_release: str | None = None,
             mark: bool = True, root: str = DEFAULT_ROOT,
             name: str | None = None) -> RollbackTask:
    """Point ``link`` back at the newest good release older than the one it points at.

    Args:
        app: the app's name.
        link: the link to move (``current``, or a colour).
        from_release: roll back only if ``link`` points at this release; this
            makes the task idempotent (a second run finds it already left:
            ``ok``). Without it, **every run steps back one more release**,
            like ``cap deploy:rollback``.
        mark: mark the release left behind failed (reason ``rolled back to
            <id>``), so later rollbacks and cleanups skip it.
        name: the step's name in reports.

    Fails with the list of releases when the link points at no release or
    there is no good release before it. Failed and incomplete releases are
    never rolled back to. The switch is atomic, as for :func:`switch`.
    Check mode: the link change and the mark. Undo: points the link back and
    removes the mark.
    """
    return RollbackTask(app, link=link, from_release=from_release, mark=mark, root=root,
                        name=name)


# -- cleanup ----------------------------------------------------------------------------


class CleanupTask(_AppTask):
    """Old releases are removed, keeping the newest good ones. See :func:`cleanup`."""

    kind: ClassVar[str] = "releases.cleanup"

    def __init__(self, app: str, *, keep: int = 5, keep_failed: int = 1,
                 root: str = DEFAULT_ROOT, name: str | None = None) -> None:
        super().__init__(app, root=root, name=name)
        for what, value in (("keep", keep), ("keep_failed", keep_failed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"cleanup: {what} must be a non-negative integer, "
                                  f"not {value!r}")
        if keep < 1:
            raise ConfigError("cleanup: keep must be at least 1")
        self.keep = keep
        self.keep_failed = keep_failed

    def target(self) -> str:
        return f"{self.app} keep {self.keep}"

    def doomed(self, state: AppReleases) -> list[ReleaseInfo]:
        """The releases to remove, oldest first."""
        return removable(state, self.keep, self.keep_failed)

    def extra_probes(self) -> dict[str, str]:
        return {"envs": environments.listing_script(self.base)}

    def doomed_environments(self, facts: Facts) -> list[environments.EnvironmentInfo]:
        """The environments no release left after the cleanup uses."""
        state: AppReleases = facts["app"]
        gone = {r.release_id for r in self.doomed(state)}
        envs = environments.parse_environments(facts["envs"], self.base)
        return environments.unused(envs, [r for r in state.releases if r not in gone])

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        for rel in self.doomed(facts["app"]):
            plan.add(f"release {rel.release_id}", rel.state, "absent")
        for env in self.doomed_environments(facts):
            plan.add(f"environment {env.name}", "unused" if env.complete else "incomplete",
                     "absent")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        doomed = self.doomed(facts["app"])
        if doomed:
            names = ", ".join(r.release_id for r in doomed)
            undo.push(f"restore releases {names}", _impossible(
                f"removed releases cannot be restored: {names}"))
            conn.run("rm -rf -- " + " ".join(quote(r.path) for r in doomed), task=self.name)
        envs = [e.path for e in self.doomed_environments(facts)]
        if envs:
            conn.run(environments.remove_command(self.base, envs), task=self.name)


def removable(state: AppReleases, keep: int, keep_failed: int = 1) -> list[ReleaseInfo]:
    """Which releases :func:`cleanup` removes, oldest first.

    Kept: every release a link in the app directory points at (``current``,
    colours); the previous good release of ``current`` (the rollback target);
    the newest ``keep`` good releases; and, of the failed releases not kept
    already, the newest ``keep_failed`` (for a post-mortem). Everything else
    goes, including interrupted installs.
    """
    ordered = state.ordered()
    kept = {target for link in state.links if (target := state.target(link))}
    current = state.target("current")
    if current is not None and (previous := state.previous_good(current)) is not None:
        kept.add(previous.release_id)
    kept |= {r.release_id for r in [r for r in ordered if r.good][-keep:]}
    failed = [r for r in ordered if r.complete and r.failed and r.release_id not in kept]
    kept |= {r.release_id for r in failed[len(failed) - keep_failed:]} if keep_failed else set()
    return [r for r in ordered if r.release_id not in kept]


def _impossible(message: str) -> Callable[[Connection], None]:
    def fail(conn: Connection) -> None:
        raise RollbackError(message, host=conn.name)
    return fail


def cleanup(app: str, *, keep: int = 5, keep_failed: int = 1, root: str = DEFAULT_ROOT,
            name: str | None = None) -> CleanupTask:
    """Remove old releases, keeping the newest ``keep`` good ones.

    Never removes a release a link points at (``current``, ``blue``,
    ``green``) nor the previous good release before ``current`` (so a
    rollback always has somewhere to go). Failed releases never count toward
    ``keep``; the newest ``keep_failed`` of them stay for inspection.
    Interrupted installs are removed. See :func:`removable` for the rule.
    Then every environment no remaining release uses is removed (under the
    environments' lock, re-checked there: one an install linked meanwhile stays).

    Idempotence: ``ok`` when nothing is beyond the limits.
    Check mode: ``release v1: ok -> absent`` per release.
    Undo: impossible (the directories are gone); the run report says so.
    """
    return CleanupTask(app, keep=keep, keep_failed=keep_failed, root=root, name=name)


# -- all together ------------------------------------------------------------------------


def deploy_steps(app: str, artifact: Artifact, *, link: str = "current", keep: int = 5,
                 root: str = DEFAULT_ROOT, **install_options: Any) -> list[Task]:
    """The classic release deploy as three tasks: :func:`install`, :func:`switch`,
    :func:`cleanup` (give them to a Runner, or run them in order)."""
    task = install(app, artifact, root=root, **install_options)
    return [task, switch(app, task.release_id, link=link, root=root),
            cleanup(app, keep=keep, root=root)]
