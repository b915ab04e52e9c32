"""Release environments: one virtualenv per dependency set, shared by the releases using it.

Building a virtualenv is most of a release install. A release whose
**dependency set** (its ``requirements.txt``, the SHA-256 of every bundled
wheel, and the host's Python: version and executable) matches an environment
already on the host links that environment instead of building one::

    /srv/sampleapp/envs/<key>.<stamp>/          a virtualenv; .dk-env written last
    /srv/sampleapp/releases/v2/venv -> /srv/sampleapp/envs/<key>.<stamp>

``<key>`` is the dependency set's hash (:func:`dependency_hash` for the
artifact's part; the host adds its Python's identity). An environment counts
only when it is **complete and sound**: its ``.dk-env`` marker (written last)
names the key and the number of files it was built with, the file count still
matches, and its interpreter runs. Anything else (a half-built directory, a
deleted package, a broken interpreter) is never used: a new environment is
built beside it, so that no live release's environment is ever touched, and
the broken one goes once no release uses it.

A changed dependency set builds a new environment (``python -m venv
--without-pip`` plus the host's own pip with ``--python``, when its pip is
recent enough: no pip copied into every environment). Environments no
release uses are listed by :func:`unused_environments` and removed by
:func:`prune` (``releases.cleanup`` removes them too, after the releases).
Builds and removals of one app take a lock (``flock`` on ``envs/.lock``).
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from deploykit.artifacts import Artifact, check_name
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.shell import quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "ENVS",
    "MARKER",
    "EnvironmentInfo",
    "PruneEnvironmentsTask",
    "dependency_hash",
    "ensure_script",
    "list_environments",
    "parse_environments",
    "prune",
    "unused",
    "unused_environments",
]

ENVS = "envs"
MARKER = ".dk-env"
PIP_OPTIONS = "--quiet --disable-pip-version-check --no-index --find-links wheels"


@functools.lru_cache(maxsize=32)
def _hash_tarball(path: str, sha256: str) -> str:
    digest = hashlib.sha256()
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar if m.isfile() and (
            m.name.lstrip("./") == "requirements.txt"
            or (m.name.lstrip("./").startswith("wheels/") and m.name.endswith(".whl")))),
            key=lambda m: m.name)
        for member in members:
            data = tar.extractfile(member)
            assert data is not None
            content = hashlib.sha256(data.read()).hexdigest()
            digest.update(f"{posixpath.basename(member.name)} {content}\n".encode())
    return digest.hexdigest()


def dependency_hash(artifact: Artifact) -> str:
    """SHA-256 over the artifact's ``requirements.txt`` and the bundled wheels' contents
    (by name); cached per artifact checksum. The host's Python is added on the host."""
    try:
        return _hash_tarball(str(Path(artifact.path).resolve()), artifact.sha256)
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"artifact {artifact.path}: cannot read its dependencies: "
                          f"{exc}") from None


def _envs_dir(base: str) -> str:
    return f"{base}/{ENVS}"


def _key_script(deps: str, python: str) -> str:
    """Shell that sets ``$key`` (the dependency set on this host) and ``$py``."""
    return (
        f"py={quote(python)}\n"
        "ident=$(\"$py\" -c 'import os, sys; print(sys.version); "
        "print(os.path.realpath(sys.executable))') || exit $?\n"
        f"key=$(printf '%s\\n%s\\n' {quote(deps)} \"$ident\" | sha256sum | cut -c1-24)\n"
    )


def _find_script(base: str) -> str:
    """Shell that sets ``$use`` to a sound complete environment of ``$key`` (or empty)."""
    envs = quote(_envs_dir(base))
    return (
        "use=\n"
        f"for d in {envs}/\"$key\".*; do\n"
        "  [ -f \"$d/" + MARKER + "\" ] || continue\n"
        "  k=; n=; { read -r k; read -r n; } < \"$d/" + MARKER + "\" || :\n"
        "  [ \"$k\" = \"$key\" ] || continue\n"
        "  [ \"$(find \"$d\" -type f ! -name '*.pyc' ! -name " + MARKER + " | wc -l)\" "
        "= \"$n\" ] || continue\n"
        "  \"$d/bin/python\" -c '' 2>/dev/null || continue\n"
        "  use=$d\n"
        "done\n"
    )


def probe_script(base: str, deps: str, python: str) -> str:
    """Read-only: ``env-key <key>`` and, when a sound environment exists, ``env-ok <path>``."""
    return (_key_script(deps, python) + _find_script(base)
            + "printf 'env-key %s\\n' \"$key\"\n"
            + "[ -z \"$use\" ] || printf 'env-ok %s\\n' \"$use\"")


def ensure_script(base: str, deps: str, python: str, *, lock_timeout: float = 600) -> str:
    """Shell, run in an unpacked release directory: link ``venv`` to the sound
    environment of this dependency set, building it first if there is none.

    Prints ``env-reused <path>`` or ``env-built <path>``. A failed build removes its
    own directory; the lock is held until the link is made.
    """
    envs = quote(_envs_dir(base))
    build = (
        "if \"$py\" -c 'import sys, pip; "
        "sys.exit(int(pip.__version__.split(\".\")[0]) < 23)' 2>/dev/null; then\n"
        "  \"$py\" -m venv --without-pip \"$use\"\n"
        f"  \"$py\" -m pip --python \"$use/bin/python\" install {PIP_OPTIONS} "
        "-r requirements.txt 2>&1 || exit $?\n"
        "else\n"
        "  \"$py\" -m venv \"$use\"\n"
        f"  \"$use/bin/pip\" install {PIP_OPTIONS} -r requirements.txt 2>&1 || exit $?\n"
        "fi\n"
    )
    return (
        f"mkdir -p -- {envs}\n"
        f"exec 9>>{envs}/.lock\n"
        f"flock -w {int(lock_timeout)} 9 || {{ echo 'error: {envs}/.lock is held' >&2; "
        "exit 4; }\n"
        + _key_script(deps, python) + _find_script(base)
        + "if [ -n \"$use\" ]; then printf 'env-reused %s\\n' \"$use\"; else\n"
        f"  use={envs}/\"$key\".$(date +%s%N); building=$use\n"
        + build
        + "  n=$(find \"$use\" -type f ! -name '*.pyc' | wc -l)\n"
        f"  printf '%s\\n%s\\n' \"$key\" \"$n\" > \"$use/{MARKER}.tmp\"\n"
        f"  mv -f -- \"$use/{MARKER}.tmp\" \"$use/{MARKER}\"; building=\n"
        "  printf 'env-built %s\\n' \"$use\"\n"
        "fi\n"
        "rm -rf -- venv; ln -s -- \"$use\" venv\n"
        "exec 9>&-"
    )


# -- what is on the host ----------------------------------------------------------------


@dataclass(frozen=True)
class EnvironmentInfo:
    """One directory under ``<root>/<app>/envs``: complete or not, and who uses it."""

    name: str
    path: str
    complete: bool
    used_by: tuple[str, ...] = ()

    @property
    def used(self) -> bool:
        """A release links it."""
        return bool(self.used_by)


def listing_script(base: str) -> str:
    """Read-only: every environment directory, its marker, and each release's venv link."""
    envs, rel = quote(_envs_dir(base)), quote(f"{base}/releases")
    return (
        f"if [ -d {envs} ]; then find {envs} -mindepth 1 -maxdepth 1 -type d "
        "-printf 'env %f\\n'; "
        f"find {envs} -mindepth 2 -maxdepth 2 -name {MARKER} -type f -printf 'envok %h\\n'; fi; "
        f"if [ -d {rel} ]; then find {rel} -mindepth 2 -maxdepth 2 -name venv -type l "
        "-printf 'venv %h %l\\n'; fi"
    )


def parse_environments(output: str, base: str) -> list[EnvironmentInfo]:
    """Parse :func:`listing_script` output, oldest name first."""
    names: set[str] = set()
    complete: set[str] = set()
    users: dict[str, list[str]] = {}
    envs = _envs_dir(base)
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "env":
            names.add(rest)
        elif kind == "envok":
            complete.add(posixpath.basename(rest))
        elif kind == "venv":
            release_dir, _, target = rest.partition(" ")
            target = posixpath.normpath(posixpath.join(release_dir, target))
            folder, name = posixpath.split(target)
            if folder == envs:
                users.setdefault(name, []).append(posixpath.basename(release_dir))
    return [EnvironmentInfo(n, f"{envs}/{n}", n in complete, tuple(sorted(users.get(n, ()))))
            for n in sorted(names)]


def unused(environments: Sequence[EnvironmentInfo],
           keep_releases: Sequence[str] | None = None) -> list[EnvironmentInfo]:
    """Environments no release uses (with ``keep_releases``: none of those releases)."""
    if keep_releases is None:
        return [e for e in environments if not e.used]
    kept = set(keep_releases)
    return [e for e in environments if not kept.intersection(e.used_by)]


def _base(app: str, root: str) -> str:
    check_name("app", app)
    if not root.startswith("/") or "\n" in root:
        raise ConfigError(f"releases root must be an absolute path, not {root!r}")
    return f"{root.rstrip('/')}/{app}"


def list_environments(conn: Connection, app: str, *,
                      root: str = "/srv") -> list[EnvironmentInfo]:
    """The app's environments on ``conn``'s host and the releases using each (one round
    trip, read-only)."""
    base = _base(app, root)
    out = conn.run(listing_script(base), write=False, check=False,
                   task=f"environments.list {app}").stdout
    return parse_environments(out, base)


def unused_environments(conn: Connection, app: str, *, root: str = "/srv") -> list[str]:
    """Paths of the app's environments that no release on the host uses (what
    :func:`prune` removes)."""
    return [e.path for e in unused(list_environments(conn, app, root=root))]


def remove_command(base: str, paths: Sequence[str]) -> str:
    """Remove these environments under the app's environment lock, each only if no
    release links it by then (an install may have linked it since the probe)."""
    envs, rel = quote(_envs_dir(base)), quote(f"{base}/releases")
    return (f"[ -d {envs} ] || exit 0; exec 9>>{envs}/.lock && flock -w 600 9 || exit 4\n"
            f"for d in {' '.join(quote(p) for p in paths)}; do used=\n"
            f"  for l in {rel}/*/venv; do [ -L \"$l\" ] || continue\n"
            "    [ \"$(readlink -- \"$l\")\" != \"$d\" ] || used=1; done\n"
            "  [ -n \"$used\" ] || rm -rf -- \"$d\"\n"
            "done")


class PruneEnvironmentsTask(Task):
    """Environments no release uses are removed. See :func:`prune`."""

    kind: ClassVar[str] = "environments.prune"

    def __init__(self, app: str, *, root: str = "/srv", name: str | None = None) -> None:
        super().__init__(name=name)
        self.app = app
        self.base = _base(app, root)

    def target(self) -> str:
        return self.app

    def probe_script(self) -> str:
        return listing_script(self.base)

    def parse(self, output: str) -> Facts:
        return {"envs": parse_environments(output, self.base)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        for env in unused(facts["envs"]):
            plan.add(f"environment {env.name}", "unused" if env.complete else "incomplete",
                     "absent")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        doomed = [e.path for e in unused(facts["envs"])]
        conn.run(remove_command(self.base, doomed), task=self.name)


def prune(app: str, *, root: str = "/srv", name: str | None = None) -> PruneEnvironmentsTask:
    """Remove the app's environments no release uses (half-built ones included).

    Idempotence: ``ok`` when every environment is in use.
    Check mode: ``environment <name>: unused -> absent``.
    Undo: nothing to undo (no release used them).
    """
    return PruneEnvironmentsTask(app, root=root, name=name)


def used_by(environments: Sequence[EnvironmentInfo]) -> Mapping[str, str]:
    """release id -> environment name."""
    return {r: e.name for e in environments for r in e.used_by}
