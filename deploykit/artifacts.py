"""Release artifacts: an app's code, migrations and wheels in one reproducible tarball.

:func:`build` makes ``<app>-<version>-<digest>.tar.gz`` on the controller from an app's
source tree (a directory, or a git ref of a repository: :func:`export_git`). The
digest is the SHA-256 of what goes in (:func:`source_digest`: every shipped file, the
version, the build steps, the wheels), so a changed source never ships under an old
tarball; :func:`ensure` reuses a tarball only when its digest matches. Hosts may have no
route to a package index, so the tarball carries every wheel the app needs (from the
shared wheelhouse, else fetched once from the app's own requirements into
``.cache/wheels/<hash>/``: :mod:`deploykit.wheelhouse`). Build steps (``python manage.py
collectstatic --noinput``) run on the controller in a copy of the source, with a venv of
the app's requirements first on ``PATH``; what they write ships. A release is installed on
the host with no network::

    python3 -m venv venv && venv/bin/pip install --no-index --find-links wheels -r requirements.txt

(:func:`install_command`; the tarball's ``install.sh`` runs the same).

The source tree::

    requirements.txt         what the app needs (resolved against the wheelhouse)
    ...                      the code, copied as is
    migrations/NNNN_name.up.sql, NNNN_name.down.sql    deploykit SQL migrations; a
                             migrations/ holding anything else (alembic's env.py,
                             Flask-Migrate) is app code and ships as it is
    versions/<version>.toml  optional: one small file per version; its
                             ``migrations = N`` ships migrations 0001..N only

and the tarball (no top-level directory; entries sorted)::

    VERSION                  the version, one line
    release.toml             a copy of versions/<version>.toml (when there is one)
    install.sh               the install command above
    requirements.txt, code, migrations/ (up to N)
    wheels/*.whl

Deterministic: entries are sorted, every mtime is :data:`EPOCH`, owners are
root, modes are 0644 (0755 for directories and executables), and the gzip
header carries no name or time, so the same sources and wheels always give
the same SHA-256 (the release tasks use it to skip an upload).
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import hashlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypedDict, Unpack

from deploykit.errors import ConfigError
from deploykit.shell import quote
from deploykit.wheelhouse import build_venv, default_wheelhouse, resolve_wheels, wheels_for

__all__ = [
    "EPOCH",
    "Artifact",
    "BuildOptions",
    "build",
    "check_members",
    "default_wheelhouse",
    "ensure",
    "export_git",
    "install_command",
    "resolve_wheels",
    "source_digest",
    "unpack_migrations",
]

EPOCH = 315532800
"""The mtime of every entry (1980-01-01, the earliest a zip-based wheel can hold)."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SKIP_NAMES = {"__pycache__", ".git", ".env", "venv", ".venv", ".pytest_cache", ".mypy_cache",
              ".ruff_cache"}
OWN_DIRS = {"migrations", "versions", "wheels"}  # top-level directories the builder fills itself
SKIP_SUFFIXES = (".pyc", ".pyo", ".tar.gz")
MIGRATION = re.compile(r"(\d+)_[A-Za-z0-9_-]+\.(up|down)\.sql\Z")  # as tasks.migrations reads


@dataclass(frozen=True)
class Artifact:
    """A built release tarball on the controller."""

    app: str
    version: str
    path: Path
    sha256: str
    size: int
    #: :func:`source_digest`: what went in (its first 12 digits end the file name); not
    #: part of equality (a tarball described by :meth:`from_file` does not know it)
    digest: str = field(default="", compare=False)

    def unpack_migrations(self, dest: str | Path) -> Path:
        """See :func:`unpack_migrations`."""
        return unpack_migrations(self, dest)

    @property
    def release_id(self) -> str:
        """The release directory name it installs as by default: the version."""
        return self.version

    @classmethod
    def from_file(cls, path: str | Path, *, app: str, version: str,
                  sha256: str | None = None) -> Artifact:
        """Describe an existing tarball (e.g. built by another job): its checksum and size.

        With ``sha256`` (the checksum the build published), a file that does not
        match is refused; either way its members are checked (:func:`check_members`).
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"artifact {p}: {exc.strerror}") from None
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise ConfigError(f"artifact {p}: SHA-256 {digest} does not match the expected "
                              f"{sha256}; the file is corrupt or was tampered with")
        check_members(data, str(p))
        return cls(check_name("app", app), check_name("version", version), p, digest, len(data))

    def read_verified(self) -> bytes:
        """The tarball's bytes, checked against :attr:`sha256` and by :func:`check_members`:
        what to upload and unpack (never the file read again after this check)."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"artifact {self.path}: {exc.strerror}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ConfigError(f"artifact {self.path}: SHA-256 {digest[:16]}... does not match "
                              f"the one recorded when it was built ({self.sha256[:16]}...); "
                              "the file changed since: rebuild it, or find who replaced it")
        if len(data) != self.size:
            raise ConfigError(f"artifact {self.path}: {len(data)} bytes, built as {self.size}")
        check_members(data, str(self.path))
        return data


def check_members(data: bytes, where: str) -> None:
    """Refuse a tarball a host must not unpack: a member with an absolute path or a
    ``..`` component, a link whose target is absolute or holds ``..``, a member inside
    a symlinked directory, a device, FIFO or other special file, a setuid/setgid mode,
    or bytes that are not a tar.gz at all. Raises :class:`ConfigError` naming the member."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"artifact {where}: not a readable tar.gz ({exc})") from None
    links: set[str] = set()
    for m in members:
        name = m.name

        def refuse(why: str, name: str = name) -> ConfigError:
            return ConfigError(f"artifact {where}: member {name!r} {why}; refusing to "
                               "unpack it")

        parts = PurePosixPath(name).parts
        if name.startswith("/") or not parts:
            raise refuse("has an absolute or empty path")
        if ".." in parts:
            raise refuse("has a '..' component (it would land outside the release)")
        if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            raise refuse("lies under a symlink (it could be written outside the release)")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            if m.linkname.startswith("/") or ".." in target.parts or not m.linkname:
                raise refuse(f"links to {m.linkname!r}, outside the release")
            if m.issym():
                links.add("/".join(parts))
        elif not (m.isfile() or m.isdir()):
            raise refuse("is a device, FIFO or other special file")
        if m.mode & 0o6000:
            raise refuse(f"has a setuid/setgid mode ({m.mode:o})")


def check_name(what: str, value: str) -> str:
    """An app name, version or release id: 1-64 of ``A-Z a-z 0-9 . _ -``, not starting
    with a dot or dash (they become file and directory names on hosts)."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ConfigError(f"{what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return value


def install_command(python: str = "python3") -> str:
    """The shell command that installs a release's venv from its bundled wheels
    (run in the release directory; no network)."""
    return (f"{quote(python)} -m venv venv && venv/bin/pip install --quiet "
            "--disable-pip-version-check --no-index --find-links wheels -r requirements.txt")


def is_sql_migrations(folder: Path) -> bool:
    """A top-level ``migrations/`` holding only ``*.sql`` files (and READMEs) is
    deploykit's; one with anything else (alembic's ``env.py`` and ``versions/``, Django,
    Flask-Migrate) is the app's own and ships as code."""
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")
               and p.name not in SKIP_NAMES]
    return any(p.suffix == ".sql" for p in entries) and \
        all(p.is_file() and (p.suffix == ".sql" or p.name.upper().startswith("README"))
            for p in entries)


def _excluded(rel: PurePosixPath, exclude: Sequence[str]) -> bool:
    text = rel.as_posix()
    return any(fnmatch.fnmatch(text, pattern) or text.startswith(pattern.rstrip("/") + "/")
               for pattern in exclude)


def _source_files(source: Path, exclude: Sequence[str] = ()) -> Iterator[Path]:
    """Every file of the source tree that ships, skipping caches, venvs, secrets, the
    directories the builder fills itself and the ``exclude`` patterns (``v2``,
    ``docs/*.md``: a path prefix or a glob on the relative path)."""
    own = set(OWN_DIRS)
    if not is_sql_migrations(source / "migrations"):
        own.discard("migrations")
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in SKIP_NAMES for part in rel.parts) or path.name.endswith(SKIP_SUFFIXES):
            continue
        if rel.parts[0] in own or not path.is_file() or \
                _excluded(PurePosixPath(rel.as_posix()), exclude):
            continue
        yield path


def _version_spec(source: Path, version: str) -> tuple[dict[str, object], bytes | None]:
    versions = source / "versions"
    if not versions.is_dir():
        return {}, None
    spec_file = versions / f"{version}.toml"
    if not spec_file.is_file():
        known = sorted(p.stem for p in versions.glob("*.toml"))
        raise ConfigError(f"{source}: no version {version!r} (versions/{version}.toml); "
                          f"known versions: {', '.join(known) or 'none'}")
    data = spec_file.read_bytes()
    try:
        return tomllib.loads(data.decode()), data
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{spec_file}: {exc}") from None


def _migrations(source: Path, upto: object) -> list[Path]:
    folder = source / "migrations"
    if not is_sql_migrations(folder):
        return []
    if upto is not None and (isinstance(upto, bool) or not isinstance(upto, int)):
        raise ConfigError(f"migrations = {upto!r} in the version file: give a number")
    found = []
    for path in sorted(folder.iterdir()):
        match = MIGRATION.match(path.name)
        if match is None:
            raise ConfigError(f"{path}: migration files are named NNNN_name.up.sql "
                              "or NNNN_name.down.sql")
        if upto is None or int(match.group(1)) <= upto:
            found.append(path)
    return found


class _Tar:
    """A tarball whose bytes depend only on what is added, in the order added."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def add(self, name: str, data: bytes, executable: bool = False) -> None:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in self.dirs:
                self.dirs.add(folder)
                self.tar.addfile(self._info(folder, tarfile.DIRTYPE, 0o755))
        info = self._info(name, tarfile.REGTYPE, 0o755 if executable else 0o644, len(data))
        self.tar.addfile(info, io.BytesIO(data))

    def gzipped(self) -> bytes:
        self.tar.close()
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0,
                           compresslevel=6) as gz:
            gz.write(self.buffer.getvalue())
        return out.getvalue()


INSTALL_SH = """#!/bin/sh
# Install this release's Python dependencies from its bundled wheels (no network).
set -eu
cd "$(dirname "$0")"
{command}
"""


def export_git(repo: str | Path, ref: str, dest: str | Path) -> str:
    """Write the tree of ``ref`` (a tag, branch or commit) of the git repository ``repo``
    into ``dest`` (``git archive``: tracked files only, no ``.git``); return the commit."""
    if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
        raise ConfigError(f"build.git_ref: {ref!r} is not a git ref")
    where = Path(repo)
    commit = subprocess.run(["git", "-C", str(where), "rev-parse", "--verify", "--quiet",
                             f"{ref}^{{commit}}"], capture_output=True, text=True, check=False)
    if commit.returncode != 0:
        raise ConfigError(f"build.git_ref: {ref!r} is not a commit of the git repository "
                          f"{where}")
    sha = commit.stdout.strip()
    archive = subprocess.run(["git", "-C", str(where), "archive", "--format=tar", sha],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise ConfigError(f"git archive {ref} in {where} failed: "
                          f"{archive.stderr.decode(errors='replace').strip()[-300:]}")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
        for member in tar.getmembers():  # git's own archive, still: nothing outside dest
            parts = PurePosixPath(member.name).parts
            link = PurePosixPath(member.linkname) if member.issym() else PurePosixPath()
            if member.name.startswith("/") or ".." in parts or link.is_absolute() or \
                    ".." in link.parts or not (member.isfile() or member.isdir()
                                               or member.issym()):
                raise ConfigError(f"git archive {ref}: refusing member {member.name!r}")
        tar.extractall(out)  # checked above (Python 3.11.2 has no filter=)
    return sha


def _entries(src: Path, version: str, exclude: Sequence[str]
             ) -> tuple[dict[str, tuple[bytes, bool]], dict[str, object]]:
    """The tarball's entries from the source (no wheels yet) and the version spec."""
    spec, spec_bytes = _version_spec(src, version)
    entries: dict[str, tuple[bytes, bool]] = {}
    for path in _source_files(src, exclude):
        entries[path.relative_to(src).as_posix()] = (path.read_bytes(),
                                                     os.access(path, os.X_OK))
    entries["VERSION"] = (f"{version}\n".encode(), False)
    entries["install.sh"] = (INSTALL_SH.format(command=install_command()).encode(), True)
    if spec_bytes is not None:
        entries["release.toml"] = (spec_bytes, False)
    for path in _migrations(src, spec.get("migrations")):
        entries[f"migrations/{path.name}"] = (path.read_bytes(), False)
    return entries, spec


def _digest(entries: dict[str, tuple[bytes, bool]], wheels: Sequence[Path],
            steps: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(entries):
        data, executable = entries[name]
        h.update(f"{name}\0{int(executable)}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).digest())
    for wheel in wheels:
        h.update(f"wheel\0{wheel.name}\0{wheel.stat().st_size}\0".encode())
    for step in steps:
        h.update(f"step\0{step}\0".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class _Inputs:
    src: Path
    requirements: Path
    entries: dict[str, tuple[bytes, bool]]
    wheels: list[Path]
    digest: str


def _inputs(src: Path, *, app: str, version: str, wheelhouse: str | Path | None,
            python_version: str | None, exclude: Sequence[str], steps: Sequence[str],
            fetch: bool) -> _Inputs:
    check_name("app", app)
    check_name("version", version)
    requirements = src / "requirements.txt"
    if not requirements.is_file():
        raise ConfigError(f"{src}: no requirements.txt (an app source tree needs one)")
    entries, _ = _entries(src, version, exclude)
    wheels = wheels_for(requirements, wheelhouse=Path(wheelhouse) if wheelhouse is not None
                        else None, python_version=python_version, fetch=fetch)
    return _Inputs(src, requirements, entries, wheels, _digest(entries, wheels, steps))


@contextlib.contextmanager
def _source(source: str | Path, git_ref: str | None) -> Iterator[Path]:
    """The source directory: ``source`` itself, or ``git_ref`` of it exported."""
    if git_ref is None:
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="dk-git-") as tmp:
        export_git(source, git_ref, tmp)
        yield Path(tmp)


def source_digest(source: str | Path, *, app: str, version: str,
                  **options: Unpack[BuildOptions]) -> str:
    """The SHA-256 of what a build of ``source`` puts in: every shipped file (path, mode,
    bytes), the version, the wheels (names and sizes) and the build steps. Options as for
    :func:`build`."""
    with _source(source, options.get("git_ref")) as src:
        return _inputs(src, app=app, version=version, wheelhouse=options.get("wheelhouse"),
                       python_version=options.get("python_version"),
                       exclude=options.get("exclude", ()), steps=options.get("steps", ()),
                       fetch=options.get("fetch", True)).digest


def _run_steps(inputs: _Inputs, steps: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
    """Run the build steps in a copy of the shipped files; the entries they leave."""
    if not steps:
        return inputs.entries
    venv = build_venv(inputs.requirements, inputs.wheels)
    with tempfile.TemporaryDirectory(prefix="dk-build-") as tmp:
        work = Path(tmp)
        for name, (data, executable) in inputs.entries.items():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o755 if executable else 0o644)
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
               "VIRTUAL_ENV": str(venv)}
        for step in steps:
            proc = subprocess.run(step, shell=True, cwd=work, env=env, capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                raise ConfigError(f"build step {step!r} of {inputs.src} failed with code "
                                  f"{proc.returncode}: "
                                  f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        out: dict[str, tuple[bytes, bool]] = {}
        for path in _source_files(work):
            out[path.relative_to(work).as_posix()] = (path.read_bytes(),
                                                      os.access(path, os.X_OK))
        for name in ("VERSION", "install.sh", "release.toml"):
            if name in inputs.entries:
                out[name] = inputs.entries[name]
        out.update({n: e for n, e in inputs.entries.items() if n.startswith("migrations/")})
        return out


def _tarball_name(app: str, version: str, digest: str) -> str:
    return f"{app}-{version}-{digest[:12]}.tar.gz"


def build(
    source: str | Path,
    *,
    app: str,
    version: str,
    out_dir: str | Path,
    wheelhouse: str | Path | None = None,
    python_version: str | None = None,
    exclude: Sequence[str] = (),
    steps: Sequence[str] = (),
    git_ref: str | None = None,
    fetch: bool = True,
) -> Artifact:
    """Build ``<out_dir>/<app>-<version>-<digest12>.tar.gz`` from the app's source.

    Args:
        source: the app's source directory (``examples/app``), or with ``git_ref`` a
            git repository; must hold ``requirements.txt``.
        app: the app's name (``sampleapp``): the tarball's and, on hosts,
            ``/srv/<app>``'s name.
        version: the version label to ship (``v2``); with a ``versions/`` directory in
            the source, ``versions/<version>.toml`` must exist.
        out_dir: where to write the tarball (created if needed).
        wheelhouse: the shared wheelhouse (default :func:`default_wheelhouse`); wheels it
            lacks come from the app's own cache (:func:`deploykit.wheelhouse.wheels_for`).
        python_version: resolve wheels for this Python (``"3.11"``) instead of
            the controller's own (hosts run their ``python3``).
        exclude: paths or globs of the source not to ship (``v2``, ``docs``).
        steps: shell commands run on the controller in a copy of the source, with the
            app's requirements installed in a venv first on ``PATH``
            (``python manage.py collectstatic --noinput``); what they write ships.
        git_ref: build the tree of this tag or commit of the repository ``source``.
        fetch: download missing wheels into the app's cache (default) or fail.

    Returns the :class:`Artifact` (path, SHA-256, size, source digest). Raises
    :class:`ConfigError` naming what is missing: the source, a version file,
    a wheel (with the app's requirements file), a failed build step.
    """
    with _source(source, git_ref) as src:
        inputs = _inputs(src, app=app, version=version, wheelhouse=wheelhouse,
                         python_version=python_version, exclude=exclude, steps=steps,
                         fetch=fetch)
        entries = dict(_run_steps(inputs, steps))
    for wheel in inputs.wheels:
        entries[f"wheels/{wheel.name}"] = (wheel.read_bytes(), False)
    tar = _Tar()
    for name in sorted(entries):
        data, executable = entries[name]
        tar.add(name, data, executable)
    payload = tar.gzipped()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / _tarball_name(app, version, inputs.digest)
    tmp = out / f".{target.name}.tmp"
    tmp.write_bytes(payload)
    os.replace(tmp, target)
    return Artifact(app, version, target, hashlib.sha256(payload).hexdigest(), len(payload),
                    inputs.digest)


class BuildOptions(TypedDict, total=False):
    """:func:`build`'s options after the source, app, version and out_dir."""

    wheelhouse: str | Path | None
    python_version: str | None
    exclude: Sequence[str]
    steps: Sequence[str]
    git_ref: str | None
    fetch: bool


def ensure(source: str | Path, *, app: str, version: str, out_dir: str | Path,
           **options: Unpack[BuildOptions]) -> Artifact:
    """The artifact of ``source`` as it is now: the tarball already built from the same
    inputs (same :func:`source_digest`: reused, its members checked), else a new build.
    Options as for :func:`build`."""
    digest = source_digest(source, app=app, version=version, **options)
    path = Path(out_dir) / _tarball_name(app, version, digest)
    if path.is_file():
        found = Artifact.from_file(path, app=app, version=version)
        return Artifact(app, version, path, found.sha256, found.size, digest)
    return build(source, app=app, version=version, out_dir=out_dir, **options)


def unpack_migrations(artifact: Artifact, dest: str | Path) -> Path:
    """Extract the artifact's ``migrations/*.sql`` into ``dest`` on the controller (made
    if needed) and return it: the directory :func:`deploykit.tasks.migrations.migrate`
    takes, with exactly the migrations this version ships."""
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(artifact.read_verified()), mode="r:gz") as tar:
        for member in tar.getmembers():
            folder, _, name = member.name.partition("/")
            if folder == "migrations" and member.isfile() and MIGRATION.match(name):
                data = tar.extractfile(member)
                assert data is not None
                (out / name).write_bytes(data.read())
    return out
