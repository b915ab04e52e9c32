"""Release artifacts: an app's code, migrations and wheels in one reproducible tarball.

:func:`build` makes ``<app>-<version>.tar.gz`` on the controller from an app's
source tree. Hosts may have no route to a package index, so the tarball
carries every wheel the app needs (copied from a wheelhouse built on the
controller by ``scripts/bootstrap.sh``), and a release is installed on the
host with no network::

    python3 -m venv venv && venv/bin/pip install --no-index --find-links wheels -r requirements.txt

(:func:`install_command`; the tarball's ``install.sh`` runs the same).

The source tree::

    requirements.txt         what the app needs (resolved against the wheelhouse)
    ...                      the code, copied as is
    migrations/NNNN_name.up.sql, NNNN_name.down.sql
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

import functools
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deploykit.errors import ConfigError
from deploykit.shell import quote

__all__ = [
    "EPOCH",
    "Artifact",
    "build",
    "check_members",
    "default_wheelhouse",
    "install_command",
    "resolve_wheels",
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


def default_wheelhouse() -> Path:
    """``$DEPLOYKIT_WHEELHOUSE``, else ``.cache/wheelhouse`` in the current directory
    (where ``scripts/bootstrap.sh`` puts it)."""
    return Path(os.environ.get("DEPLOYKIT_WHEELHOUSE", ".cache/wheelhouse"))


@functools.lru_cache(maxsize=32)
def _resolve(requirements: str, wheelhouse: str, listing: tuple[tuple[str, int], ...],
             python_version: str | None) -> tuple[str, ...]:
    with tempfile.TemporaryDirectory(prefix="dk-wheels-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements)
        dest = Path(tmp) / "out"
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-index",
                "--disable-pip-version-check", "--no-cache-dir", "--only-binary=:all:",
                "--find-links", wheelhouse, "--dest", str(dest), "-r", str(req)]
        if python_version:
            argv += ["--python-version", python_version]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
            raise ConfigError(
                f"cannot collect the wheels of {requirements.strip()!r} from the wheelhouse "
                f"{wheelhouse}: {' '.join(errors) or proc.stderr.strip()[-500:]}. Add the "
                "package to the app's requirements.txt and refresh the wheelhouse with "
                "`bash scripts/bootstrap.sh setup`")
        return tuple(sorted(p.name for p in dest.iterdir()))


def resolve_wheels(requirements: Path, wheelhouse: Path,
                   python_version: str | None = None) -> list[Path]:
    """The wheelhouse files a requirements file needs, dependencies included.

    Resolved by ``pip download --no-index`` against the wheelhouse only (no
    network), for this interpreter or ``python_version`` (``"3.11"``); cached
    per process while the requirements and the wheelhouse are unchanged.
    """
    if not wheelhouse.is_dir():
        raise ConfigError(f"wheelhouse {wheelhouse} does not exist; build it with "
                          "`bash scripts/bootstrap.sh setup`")
    listing = tuple(sorted((p.name, p.stat().st_size) for p in wheelhouse.glob("*.whl")))
    names = _resolve(requirements.read_text(), str(wheelhouse.resolve()), listing,
                     python_version)
    return [wheelhouse / name for name in names]


def _source_files(source: Path) -> Iterator[Path]:
    """Every file of the source tree that ships, skipping caches, venvs and secrets."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in SKIP_NAMES for part in rel.parts) or path.name.endswith(SKIP_SUFFIXES):
            continue
        if rel.parts[0] in OWN_DIRS or not path.is_file():
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
    if not folder.is_dir():
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


def build(
    source: str | Path,
    *,
    app: str,
    version: str,
    out_dir: str | Path,
    wheelhouse: str | Path | None = None,
    python_version: str | None = None,
) -> Artifact:
    """Build ``<out_dir>/<app>-<version>.tar.gz`` from the app's source tree.

    Args:
        source: the app's source directory (``examples/app``); must hold
            ``requirements.txt``.
        app: the app's name (``sampleapp``): the tarball's and, on hosts,
            ``/srv/<app>``'s name.
        version: the version to ship (``v2``); with a ``versions/`` directory in
            the source, ``versions/<version>.toml`` must exist.
        out_dir: where to write the tarball (created if needed); an older
            tarball of the same name is replaced atomically.
        wheelhouse: the directory of wheels to copy from (default
            :func:`default_wheelhouse`).
        python_version: resolve wheels for this Python (``"3.11"``) instead of
            the controller's own (hosts run their ``python3``).

    Returns the :class:`Artifact` (path, SHA-256, size). Raises
    :class:`ConfigError` naming what is missing: the source, a version file,
    a wheel the wheelhouse lacks.
    """
    src = Path(source)
    check_name("app", app)
    check_name("version", version)
    requirements = src / "requirements.txt"
    if not requirements.is_file():
        raise ConfigError(f"{src}: no requirements.txt (an app source tree needs one)")
    spec, spec_bytes = _version_spec(src, version)
    wheels = resolve_wheels(requirements, Path(wheelhouse) if wheelhouse is not None
                            else default_wheelhouse(), python_version)
    entries: dict[str, tuple[bytes, bool]] = {}
    for path in _source_files(src):
        entries[path.relative_to(src).as_posix()] = (path.read_bytes(),
                                                     os.access(path, os.X_OK))
    entries["VERSION"] = (f"{version}\n".encode(), False)
    entries["install.sh"] = (INSTALL_SH.format(command=install_command()).encode(), True)
    if spec_bytes is not None:
        entries["release.toml"] = (spec_bytes, False)
    for path in _migrations(src, spec.get("migrations")):
        entries[f"migrations/{path.name}"] = (path.read_bytes(), False)
    for wheel in wheels:
        entries[f"wheels/{wheel.name}"] = (wheel.read_bytes(), False)
    tar = _Tar()
    for name in sorted(entries):
        data, executable = entries[name]
        tar.add(name, data, executable)
    payload = tar.gzipped()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{app}-{version}.tar.gz"
    tmp = out / f".{target.name}.tmp"
    tmp.write_bytes(payload)
    os.replace(tmp, target)
    return Artifact(app, version, target, hashlib.sha256(payload).hexdigest(), len(payload))


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
