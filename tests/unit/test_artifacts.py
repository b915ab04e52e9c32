"""deploykit.artifacts on the controller: what a release tarball holds, byte for byte.

Built from the real sample app (examples/app) and the real offline wheelhouse
(.cache/wheelhouse, made by scripts/bootstrap.sh); no host involved.
"""

from __future__ import annotations

import hashlib
import os
import re
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


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Per-test wheel and build-venv cache (never the shared .cache)."""
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def build(source: Path, wheelhouse: Path, out: Path, version: str = "v1",
          **options: object) -> Artifact:
    """A build that never downloads: wheels from the wheelhouse only."""
    options.setdefault("fetch", False)
    return artifacts.build(source, app="sampleapp", version=version, out_dir=out,
                           wheelhouse=wheelhouse, **options)  # type: ignore[arg-type]


NAME = r"sampleapp-{}-[0-9a-f]{{12}}\.tar\.gz"


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
    assert first.path.name == second.path.name == f"sampleapp-v1-{first.digest[:12]}.tar.gz"
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
    assert re.fullmatch(NAME.format(version), artifact.path.name)
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
    # the app's own requirements file is named, and how to fetch its wheels; not
    # deploykit's bootstrap script
    assert f"the app's requirements file {copy / 'requirements.txt'}" in message
    assert f"from {wheelhouse}" in message and "not-in-the-wheelhouse" in message
    assert "pip download --only-binary=:all: -d" in message
    assert "bootstrap" not in message


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


def test_a_top_level_migrations_folder_of_alembic_ships_as_app_code(
        project_root: Path, wheelhouse: Path, tmp_path: Path) -> None:
    source = project_root / "examples" / "datasette"
    artifact = artifacts.build(source, app="dkdatasette", version="v1", out_dir=tmp_path,
                               wheelhouse=wheelhouse, exclude=("v2",))
    names = set(members(artifact))
    assert {"migrations/env.py", "migrations/versions/a1b2c3d40001_create_notes.py",
            "alembic.ini"} <= names
    assert not any(n.startswith("v2/") for n in names)


def test_a_changed_source_ships_under_the_same_version_label(source: Path, wheelhouse: Path,
                                                             tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(source, copy)
    out = tmp_path / "dist"
    first = artifacts.ensure(copy, app="sampleapp", version="v1", out_dir=out,
                             wheelhouse=wheelhouse, fetch=False)
    again = artifacts.ensure(copy, app="sampleapp", version="v1", out_dir=out,
                             wheelhouse=wheelhouse, fetch=False)
    assert again == first and again.digest == first.digest  # reused: same inputs
    (copy / "sampleapp" / "web.py").write_text("# fixed\n")
    fixed = artifacts.ensure(copy, app="sampleapp", version="v1", out_dir=out,
                             wheelhouse=wheelhouse, fetch=False)
    assert fixed.path != first.path and fixed.sha256 != first.sha256
    assert read(fixed, "sampleapp/web.py") == b"# fixed\n"
    assert read(first, "sampleapp/web.py") != b"# fixed\n"


def test_a_git_ref_builds_that_commits_tree(source: Path, wheelhouse: Path,
                                            tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    shutil.copytree(source, repo)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "v1")
    git("tag", "v1")
    (repo / "sampleapp" / "web.py").write_text("# v2\n")
    (repo / "untracked.txt").write_text("never shipped from a ref\n")
    git("commit", "-qam", "v2")
    tagged = build(repo, wheelhouse, tmp_path / "a", git_ref="v1")
    head = build(repo, wheelhouse, tmp_path / "b", git_ref="HEAD")
    assert read(tagged, "sampleapp/web.py") == (source / "sampleapp" / "web.py").read_bytes()
    assert read(head, "sampleapp/web.py") == b"# v2\n"
    assert "untracked.txt" not in members(head) and ".git" not in members(head)
    with pytest.raises(ConfigError, match=r"build.git_ref: 'nope' is not a commit of the git"):
        build(repo, wheelhouse, tmp_path / "c", git_ref="nope")
    with pytest.raises(ConfigError, match=r"'--upload-pack=x' is not a git ref"):
        build(repo, wheelhouse, tmp_path / "c", git_ref="--upload-pack=x")


def test_missing_wheels_are_fetched_once_into_the_apps_cache_by_requirements_hash(
        project_root: Path, wheelhouse: Path, tmp_path: Path, own_cache: Path) -> None:
    from deploykit import wheelhouse as wh

    source = project_root / "examples" / "django"
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    local_index = ("--no-index", "--find-links", str(wheelhouse))  # the test's "index"
    requirements = source / "requirements.txt"
    wheels = wh.wheels_for(requirements, wheelhouse=empty, index_args=local_index)
    key = wh.requirements_key(requirements)
    assert {w.parent for w in wheels} == {own_cache / "wheels" / key}
    assert any(w.name.startswith("django-5.2") for w in wheels)
    stamp = (own_cache / "wheels" / key / ".complete").stat().st_mtime_ns
    again = wh.wheels_for(requirements, wheelhouse=empty, index_args=("--index-url",
                                                                      "http://127.0.0.1:9/"))
    assert again == wheels  # cached: the unreachable index was never asked
    assert (own_cache / "wheels" / key / ".complete").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"the app's requirements file .*django/requirements"):
        wh.wheels_for(requirements, wheelhouse=empty, fetch=False,
                      python_version="3.12")


def test_build_steps_run_on_the_controller_and_what_they_write_ships(
        project_root: Path, wheelhouse: Path, tmp_path: Path) -> None:
    source = project_root / "examples" / "django"
    artifact = artifacts.build(source, app="dkdjango", version="v1", out_dir=tmp_path,
                               wheelhouse=wheelhouse, exclude=("v2",), fetch=False,
                               steps=("python manage.py collectstatic --noinput",))
    names = set(members(artifact))
    assert "staticfiles/notes/site.css" in names
    assert "staticfiles/admin/css/base.css" in names  # Django's own, from the build venv
    assert not (source / "staticfiles").exists()  # the source tree is never written
    with pytest.raises(ConfigError, match=r"build step 'false' of .* failed with code 1"):
        artifacts.build(source, app="dkdjango", version="v1", out_dir=tmp_path,
                        wheelhouse=wheelhouse, exclude=("v2",), fetch=False, steps=("false",))
