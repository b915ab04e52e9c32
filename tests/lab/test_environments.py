"""The release environment store over real SSH: reuse, rebuild, never touch a used one.

Real sample-app artifacts; a "changed" artifact is the sample app with one more
requirement (itsdangerous, in the wheelhouse). Everything is asserted on the host.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploykit import artifacts
from deploykit.artifacts import Artifact
from deploykit.connection import Connection
from deploykit.result import Status
from deploykit.tasks import environments, releases

HOST = "web-1"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("artifacts")
    wheelhouse = project_root / ".cache" / "wheelhouse"
    made = {v: artifacts.build(project_root / "examples" / "app", app="sampleapp", version=v,
                               out_dir=out, wheelhouse=wheelhouse) for v in ("v1", "v2")}
    changed = tmp_path_factory.mktemp("changed") / "app"
    shutil.copytree(project_root / "examples" / "app", changed)
    with (changed / "requirements.txt").open("a") as f:
        f.write("itsdangerous>=2\n")
    made["v3"] = artifacts.build(changed, app="sampleapp", version="v2",  # installed as v3
                                 out_dir=out / "changed", wheelhouse=wheelhouse)
    return made


@pytest.fixture
def conn(clean_lab: Any, lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture
def app(conn: Connection) -> str:
    name = f"dkenv{uuid.uuid4().hex[:6]}"
    conn.run(f"mkdir -p /srv/{name}/shared && echo PORT=8000 > /srv/{name}/shared/.env")
    return name


def envs(conn: Connection, app: str) -> list[str]:
    """The environment directories on the host."""
    out = conn.run(f"ls -1 /srv/{app}/envs", check=False).stdout
    return sorted(out.split())


def venv_of(conn: Connection, app: str, release: str) -> str:
    return conn.run(f"readlink -f /srv/{app}/releases/{release}/venv").stdout.strip()


def fingerprint(conn: Connection, path: str) -> str:
    """Every file of a directory tree with its size and mtime, hashed."""
    return conn.run(f"cd {path} && find . -printf '%P %s %T@\\n' | sort | sha256sum").stdout


def install(conn: Connection, app: str, built: dict[str, Artifact], release_id: str) -> str:
    result = releases.install(app, built[release_id], release_id=release_id).run(conn)
    assert result.status is Status.CHANGED, result.message
    return result.diff


def imports(conn: Connection, app: str, release: str, modules: str) -> bool:
    return conn.run(f"/srv/{app}/releases/{release}/venv/bin/python -c 'import {modules}'",
                    check=False).ok


def test_unchanged_dependencies_reuse_the_environment(conn: Connection, app: str,
                                                      built: dict[str, Artifact]) -> None:
    first = install(conn, app, built, "v1")
    assert "(new)" in first
    (env,) = envs(conn, app)
    before = fingerprint(conn, f"/srv/{app}/envs/{env}")
    diff = install(conn, app, built, "v2")
    assert f"environment: (none) -> /srv/{app}/envs/{env} (reused)" in diff
    assert envs(conn, app) == [env]  # nothing was built
    assert venv_of(conn, app, "v2") == venv_of(conn, app, "v1") == f"/srv/{app}/envs/{env}"
    assert fingerprint(conn, f"/srv/{app}/envs/{env}") == before
    assert imports(conn, app, "v2", "gunicorn, psycopg, redis")  # the shared one runs
    # the programs' entry points run from the shared environment too
    assert conn.run(f"/srv/{app}/releases/v2/venv/bin/gunicorn --version").ok


def test_a_changed_requirement_builds_a_new_one_and_leaves_the_old(
        conn: Connection, app: str, built: dict[str, Artifact]) -> None:
    install(conn, app, built, "v1")
    (old,) = envs(conn, app)
    before = fingerprint(conn, f"/srv/{app}/envs/{old}")
    diff = install(conn, app, built, "v3")
    assert "(new)" in diff
    assert len(envs(conn, app)) == 2
    assert venv_of(conn, app, "v1") == f"/srv/{app}/envs/{old}"
    assert venv_of(conn, app, "v3") != venv_of(conn, app, "v1")
    assert fingerprint(conn, f"/srv/{app}/envs/{old}") == before
    assert imports(conn, app, "v3", "itsdangerous, gunicorn")
    assert not imports(conn, app, "v1", "itsdangerous")
    # the environment built without pip in it: the host's pip did the install
    assert not conn.run(f"test -e /srv/{app}/releases/v3/venv/bin/pip", check=False).ok


@pytest.mark.parametrize("damage", [
    "rm -f {env}/.dk-env",                                   # half-built: no marker
    "rm -f {env}/lib/python3*/site-packages/redis/client.py",  # a package file lost
    "rm -f {env}/bin/python",                                # no interpreter
])
def test_a_broken_environment_is_rebuilt_never_used(conn: Connection, app: str,
                                                    built: dict[str, Artifact],
                                                    damage: str) -> None:
    install(conn, app, built, "v1")
    (broken,) = envs(conn, app)
    conn.run(damage.format(env=f"/srv/{app}/envs/{broken}"))
    diff = install(conn, app, built, "v2")
    assert "(new)" in diff
    (fresh,) = set(envs(conn, app)) - {broken}
    assert venv_of(conn, app, "v2") == f"/srv/{app}/envs/{fresh}"
    assert imports(conn, app, "v2", "gunicorn, psycopg, redis.client")
    assert envs(conn, app) == sorted([broken, fresh])  # the broken one is v1's: left alone


def test_cleanup_and_prune_remove_only_unused_environments(
        conn: Connection, app: str, built: dict[str, Artifact]) -> None:
    install(conn, app, built, "v1")
    (used_by_v1,) = envs(conn, app)
    install(conn, app, built, "v3")
    assert releases.switch(app, "v3").run(conn).status is Status.CHANGED
    conn.run(f"mkdir -p /srv/{app}/envs/deadbeef.1/bin")  # an interrupted build
    assert sorted(environments.unused_environments(conn, app)) == [
        f"/srv/{app}/envs/deadbeef.1"]
    # v1 is the rollback target: kept, and so is its environment
    kept = releases.cleanup(app, keep=1).run(conn)
    assert kept.diff == "environment deadbeef.1: incomplete -> absent"
    assert used_by_v1 in envs(conn, app)
    assert imports(conn, app, "v1", "gunicorn")
    # once v1 is gone (failed, not kept), its environment goes with it
    assert releases.mark_failed(app, "v1").run(conn).status is Status.CHANGED
    gone = releases.cleanup(app, keep=1, keep_failed=0).run(conn)
    assert gone.status is Status.CHANGED, gone.message
    assert gone.diff == f"release v1: failed -> absent\nenvironment {used_by_v1}: unused -> absent"
    assert envs(conn, app) == [venv_of(conn, app, "v3").rsplit("/", 1)[1]]
    assert imports(conn, app, "v3", "itsdangerous")
    assert environments.unused_environments(conn, app) == []
    assert environments.prune(app).run(conn).status is Status.OK
