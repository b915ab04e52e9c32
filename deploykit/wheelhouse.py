"""An app's wheels and build environment on the controller, made from its own requirements.

Hosts may have no route to a package index, so a release carries its wheels. They come
from, in order:

1. the shared wheelhouse (``$DEPLOYKIT_WHEELHOUSE``, else ``.cache/wheelhouse``);
2. the app's own wheel cache, ``.cache/wheels/<hash>/``, filled once by ``pip download``
   from the app's requirements file (the hash covers the file's bytes and the target
   Python: a changed requirement downloads again, an unchanged one never does).

When neither has them, the error names the app's requirements file and the command that
fills the cache by hand. :func:`build_venv` makes a venv from those wheels for build steps
run on the controller (``manage.py collectstatic``), cached the same way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deploykit.errors import ConfigError

__all__ = ["build_venv", "cache_dir", "default_wheelhouse", "fetch_wheels", "requirements_key",
           "resolve_wheels", "wheels_for"]


def default_wheelhouse() -> Path:
    """``$DEPLOYKIT_WHEELHOUSE``, else ``.cache/wheelhouse`` in the current directory."""
    return Path(os.environ.get("DEPLOYKIT_WHEELHOUSE", ".cache/wheelhouse"))


def cache_dir() -> Path:
    """Where per-app wheels and build venvs are cached: ``$DEPLOYKIT_CACHE`` or ``.cache``."""
    return Path(os.environ.get("DEPLOYKIT_CACHE", ".cache"))


def requirements_key(requirements: Path, python_version: str | None = None) -> str:
    """The cache key of a requirements file: SHA-256 of its bytes and the target Python."""
    try:
        data = requirements.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the app's requirements file {requirements}: "
                          f"{exc.strerror}") from None
    target = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return hashlib.sha256(data + b"\0" + target.encode()).hexdigest()[:16]


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          check=False)


def _errors(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    return " ".join(lines) or proc.stderr.strip()[-500:]


@functools.lru_cache(maxsize=32)
def _resolve(requirements: str, wheelhouse: str, listing: tuple[tuple[str, int], ...],
             python_version: str | None) -> tuple[tuple[str, ...], str]:
    """(wheel names, "") or ((), pip's error): resolved against ``wheelhouse`` only."""
    with tempfile.TemporaryDirectory(prefix="dk-wheels-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements)
        dest = Path(tmp) / "out"
        argv = ["download", "--quiet", "--no-index", "--disable-pip-version-check",
                "--no-cache-dir", "--only-binary=:all:", "--find-links", wheelhouse,
                "--dest", str(dest), "-r", str(req)]
        if python_version:
            argv += ["--python-version", python_version]
        proc = _pip(argv)
        if proc.returncode != 0:
            return (), _errors(proc)
        return tuple(sorted(p.name for p in dest.iterdir())), ""


def _try(requirements: Path, wheelhouse: Path, python_version: str | None
         ) -> tuple[list[Path], str]:
    if not wheelhouse.is_dir():
        return [], f"wheelhouse {wheelhouse} does not exist"
    listing = tuple(sorted((p.name, p.stat().st_size) for p in wheelhouse.glob("*.whl")))
    names, error = _resolve(requirements.read_text(), str(wheelhouse.resolve()), listing,
                            python_version)
    return [wheelhouse / name for name in names], error


def resolve_wheels(requirements: Path, wheelhouse: Path,
                   python_version: str | None = None) -> list[Path]:
    """The wheelhouse files a requirements file needs, dependencies included, resolved by
    ``pip download --no-index`` against the wheelhouse only; cached per process while the
    requirements and the wheelhouse are unchanged. ConfigError names the requirements
    file and what is missing."""
    wheels, error = _try(requirements, wheelhouse, python_version)
    if error:
        raise ConfigError(_missing(requirements, [wheelhouse], error))
    return wheels


def _missing(requirements: Path, places: Sequence[Path], error: str) -> str:
    return (f"cannot collect the wheels of the app's requirements file {requirements} from "
            f"{' or '.join(str(p) for p in places)}: {error}. Fetch them on a machine with "
            f"access to the package index: `pip download --only-binary=:all: -d "
            f"{places[-1]} -r {requirements}`")


def fetch_wheels(requirements: Path, dest: Path, *, python_version: str | None = None,
                 index_args: Sequence[str] = ()) -> Path:
    """Download the wheels of ``requirements`` into ``dest`` (once: a complete ``dest`` is
    marked and reused). ``index_args`` go to pip (``--index-url``, or ``--no-index
    --find-links DIR``). ConfigError names the requirements file on failure."""
    done = dest / ".complete"
    if done.is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = ["download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
            "--dest", str(tmp), "-r", str(requirements), *index_args]
    if python_version:
        argv += ["--python-version", python_version]
    proc = _pip(argv)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(_missing(requirements, [dest], _errors(proc)))
    (tmp / ".complete").write_text(requirements.read_text())
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def wheels_for(requirements: Path, *, wheelhouse: Path | None = None,
               python_version: str | None = None, fetch: bool = True,
               index_args: Sequence[str] = ()) -> list[Path]:
    """The wheels an app needs: from the shared wheelhouse if it has them all, else from
    the app's cache ``.cache/wheels/<requirements hash>/`` (downloaded once when
    ``fetch``)."""
    shared = wheelhouse if wheelhouse is not None else default_wheelhouse()
    wheels, error = _try(requirements, shared, python_version)
    if not error:
        return wheels
    own = cache_dir() / "wheels" / requirements_key(requirements, python_version)
    if not (own / ".complete").is_file():
        if not fetch:
            raise ConfigError(_missing(requirements, [shared, own], error))
        fetch_wheels(requirements, own, python_version=python_version, index_args=index_args)
    wheels, error = _try(requirements, own, python_version)
    if error:
        raise ConfigError(_missing(requirements, [shared, own], error))
    return wheels


def build_venv(requirements: Path, wheels: Sequence[Path]) -> Path:
    """A venv on the controller with the app's requirements, from ``wheels`` (no network),
    for build steps; cached as ``.cache/build-venvs/<requirements hash>``."""
    venv = cache_dir() / "build-venvs" / requirements_key(requirements)
    if (venv / ".complete").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dk-links-") as links:
        for wheel in wheels:
            os.symlink(wheel.resolve(), Path(links) / wheel.name)
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  "--disable-pip-version-check", "--no-index", "--find-links", links,
                  "-r", str(requirements)]]
        for argv in steps:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise ConfigError(f"cannot make the build venv for {requirements}: "
                                  f"{proc.stderr.strip()[-500:]}")
    (venv / ".complete").write_text(requirements.read_text())
    return venv
