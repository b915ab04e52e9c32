"""deploykit.artifacts on the controller: what a release tarball holds, byte for byte.

Built from the real sample app (examples/app) and the real offline wheelhouse
(.cache/wheelhouse, made by scripts/bootstrap.sh); no host involved.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tomllib
from pathlib import Path

import pytest

from deploykit import artifacts
from deploykit.artifacts import EPOCH, Artifact
from deploykit.errors import ConfigError

APP_WHEELS = {"async_timeout", "gunicorn", "psycopg", "psycopg_binary", "redis",
              "typing_extensions"}


@pytest.fixture(scope="module")
def source(project_root: Path) -> Path:
    return project_root / "examples" / "app"


@pytest.fixture(scope="module")
def wheelhouse(project_root: Path) -> Path:
    return project_root / ".cache" / "wheelhouse"


def build(source: Path, wheelhouse: Path, out: Path, version: str = "v1") -> Artifact:
    return artifacts.build(source, app="sampleapp", version=version, out_dir=out,
                           wheelhouse=wheelhouse)


def members(artifact: Artifact) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(artifact.path) as tar:
        return {m.name: m for m in tar.getmembers()}


def read(artifact: Artifact, name: str) -> bytes:
    with tarfile.open(artifact.path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_the_same_sources_always_give_the_same_bytes(source: Path, wheelhouse: Path,
                                                     tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(source, copy)
    first = build(copy, wheelhouse, tmp_path / "a")
    for path in copy.rglob("*"):  # new mtimes, as after a fresh checkout
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = build(copy, wheelhouse, tmp_path / "b")
    assert first.path.name == second.path.name == "sampleapp-v1.tar.gz"
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert first.size == first.path.stat().st_size
    header = first.path.read_bytes()[:10]
    assert header[3] == 0, "no file name (or other optional field) in the gzip header"
    assert header[4:8] == b"\0\0\0\0", "gzip mtime is zero"
    # another version is another artifact
    assert build(copy, wheelhouse, tmp_path / "c", "v2").sha256 != first.sha256


def test_entries_are_sorted_root_owned_and_dated_epoch(source: Path, wheelhouse: Path,
                                                       tmp_path: Path) -> None:
    artifact = build(source, wheelhouse, tmp_path)
    entries = list(members(artifact).values())
    names = [m.name for m in entries]
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in entries} == {
        (EPOCH, 0, 0, "root", "root")}
    modes = {m.name: (m.type, m.mode) for m in entries}
    assert modes["sampleapp"] == (tarfile.DIRTYPE, 0o755)
    assert modes["sampleapp/web.py"] == (tarfile.REGTYPE, 0o644)
    assert modes["install.sh"] == (tarfile.REGTYPE, 0o755)


def test_v1_ships_its_code_version_and_only_migration_0001(source: Path, wheelhouse: Path,
                                                           tmp_path: Path) -> None:
    artifact = build(source, wheelhouse, tmp_path)
    files = {n for n, m in members(artifact).items() if m.isfile()}
    assert {"VERSION", "release.toml", "install.sh", "requirements.txt", "gunicorn.conf.py",
            "sampleapp/web.py", "sampleapp/config.py", "migrations/0001_create_items.up.sql",
            "migrations/0001_create_items.down.sql"} <= files
    assert not any(n.startswith("migrations/0002") for n in files)
    assert not any(n.startswith("versions/") for n in files)
    assert read(artifact, "VERSION") == b"v1\n"
    assert read(artifact, "release.toml") == (source / "versions" / "v1.toml").read_bytes()
    assert read(artifact, "sampleapp/web.py") == (source / "sampleapp" / "web.py").read_bytes()
    install_sh = read(artifact, "install.sh").decode()
    assert artifacts.install_command() in install_sh
    assert artifacts.install_command() == (
        "python3 -m venv venv && venv/bin/pip install --quiet --disable-pip-version-check "
        "--no-index --find-links wheels -r requirements.txt")


def test_v2_adds_migration_0002_and_its_features(source: Path, wheelhouse: Path,
                                                 tmp_path: Path) -> None:
    artifact = build(source, wheelhouse, tmp_path, "v2")
    names = set(members(artifact))
    assert {"migrations/0001_create_items.up.sql", "migrations/0002_add_item_note.up.sql",
            "migrations/0002_add_item_note.down.sql"} <= names
    spec = tomllib.loads(read(artifact, "release.toml").decode())
    assert spec["migrations"] == 2 and spec["features"] == ["notes"]
    assert b"ADD COLUMN note" in read(artifact, "migrations/0002_add_item_note.up.sql")


@pytest.mark.parametrize(("version", "fault"), [("v3-broken", "health"), ("v4-slow", "slow"),
                                                ("v5-crash", "crash")])
def test_faulty_versions_say_their_fault(source: Path, wheelhouse: Path, tmp_path: Path,
                                         version: str, fault: str) -> None:
    artifact = build(source, wheelhouse, tmp_path, version)
    assert artifact.path.name == f"sampleapp-{version}.tar.gz"
    assert tomllib.loads(read(artifact, "release.toml").decode())["fault"] == fault


def test_wheels_are_exactly_what_the_requirements_need(source: Path, wheelhouse: Path,
                                                       tmp_path: Path) -> None:
    artifact = build(source, wheelhouse, tmp_path)
    wheels = {n.removeprefix("wheels/"): m for n, m in members(artifact).items()
              if n.startswith("wheels/") and m.isfile()}
    assert {name.split("-")[0].lower() for name in wheels} == APP_WHEELS  # no alembic, ...
    for name in wheels:
        assert read(artifact, f"wheels/{name}") == (wheelhouse / name).read_bytes()


def test_caches_venvs_and_env_files_never_ship(source: Path, wheelhouse: Path,
                                               tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(source, copy)
    (copy / ".env").write_text("DATABASE_URL=postgresql://u:secret@h/db\n")
    (copy / "sampleapp" / "__pycache__").mkdir(exist_ok=True)
    (copy / "sampleapp" / "__pycache__" / "web.cpython-311.pyc").write_bytes(b"x")
    (copy / "venv" / "bin").mkdir(parents=True)
    (copy / "venv" / "bin" / "python").write_text("")
    (copy / "tool.sh").write_text("#!/bin/sh\n")
    (copy / "tool.sh").chmod(0o755)
    names = members(build(copy, wheelhouse, tmp_path / "out"))
    assert not [n for n in names if ".env" in n or "__pycache__" in n or n.startswith("venv")]
    assert names["tool.sh"].mode == 0o755


def test_an_unknown_version_names_the_known_ones(source: Path, wheelhouse: Path,
                                                 tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build(source, wheelhouse, tmp_path, "v9")
    assert err.value.message == (
        f"{source}: no version 'v9' (versions/v9.toml); known versions: v1, v2, v3-broken, "
        "v4-slow, v5-crash")
    assert not list(tmp_path.iterdir())


def test_a_wheel_missing_from_the_wheelhouse_is_a_clear_error(source: Path, wheelhouse: Path,
                                                               tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(source, copy)
    (copy / "requirements.txt").write_text("gunicorn\nnot-in-the-wheelhouse==1.0\n")
    with pytest.raises(ConfigError) as err:
        build(copy, wheelhouse, tmp_path / "out")
    message = err.value.message
    assert f"from the wheelhouse {wheelhouse.resolve()}" in message
    assert "not-in-the-wheelhouse" in message
    assert "bash scripts/bootstrap.sh setup" in message


def test_a_missing_wheelhouse_or_requirements_file_is_named(source: Path, tmp_path: Path,
                                                            wheelhouse: Path) -> None:
    with pytest.raises(ConfigError, match=f"wheelhouse {tmp_path}/none does not exist"):
        build(source, tmp_path / "none", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no requirements\.txt"):
        build(tmp_path / "empty", wheelhouse, tmp_path)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-v1", ".hidden", "a b", "x" * 65])
def test_names_that_would_escape_a_directory_are_refused(source: Path, wheelhouse: Path,
                                                         tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="use 1-64 letters"):
        artifacts.build(source, app=bad, version="v1", out_dir=tmp_path, wheelhouse=wheelhouse)
    with pytest.raises(ConfigError, match="use 1-64 letters"):
        artifacts.build(source, app="sampleapp", version=bad, out_dir=tmp_path,
                        wheelhouse=wheelhouse)


def test_an_existing_tarball_is_described_by_its_checksum(source: Path, wheelhouse: Path,
                                                          tmp_path: Path) -> None:
    built = build(source, wheelhouse, tmp_path)
    again = Artifact.from_file(built.path, app="sampleapp", version="v1")
    assert again == built
    assert again.release_id == "v1"
    with pytest.raises(ConfigError, match=r"artifact .*/missing\.tar\.gz: No such file"):
        Artifact.from_file(tmp_path / "missing.tar.gz", app="sampleapp", version="v1")


def test_install_command_quotes_the_interpreter() -> None:
    assert artifacts.install_command("/opt/py 3/bin/python3").startswith(
        "'/opt/py 3/bin/python3' -m venv venv && ")


def test_migrations_unpack_for_the_migrations_task(source: Path, wheelhouse: Path,
                                                   tmp_path: Path) -> None:
    v1 = build(source, wheelhouse, tmp_path / "v1").unpack_migrations(tmp_path / "m1")
    assert sorted(p.name for p in v1.iterdir()) == [
        "0001_create_items.down.sql", "0001_create_items.up.sql"]
    v2 = artifacts.unpack_migrations(build(source, wheelhouse, tmp_path / "v2", "v2"),
                                     tmp_path / "m2")
    assert sorted(p.name for p in v2.iterdir()) == [
        "0001_create_items.down.sql", "0001_create_items.up.sql",
        "0002_add_item_note.down.sql", "0002_add_item_note.up.sql"]
    assert (v2 / "0002_add_item_note.up.sql").read_bytes() == (
        source / "migrations" / "0002_add_item_note.up.sql").read_bytes()
