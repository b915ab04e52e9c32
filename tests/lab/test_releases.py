"""Release tasks over real SSH: real artifacts unpacked and installed on web-1.

Installs use real sample-app artifacts built into a temporary directory (a real
venv from the bundled wheels, no network). Tests of switching, rollback and
cleanup also lay out releases directly on the host (a directory with a release
record, as an install leaves it), which is quicker than installing each. Every
task runs in check mode first (no write), then twice: ``changed``, then ``ok``
with no write command.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploykit import artifacts
from deploykit.artifacts import Artifact
from deploykit.connection import Connection
from deploykit.result import Result, Status
from deploykit.task import Task, UndoStack
from deploykit.tasks import releases
from deploykit.tasks.releases import AppReleases, ReleaseInfo, removable

HOST = "web-1"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("artifacts")
    return {v: artifacts.build(project_root / "examples" / "app", app="sampleapp", version=v,
                               out_dir=out, wheelhouse=project_root / ".cache" / "wheelhouse")
            for v in ("v1", "v2")}


@pytest.fixture
def conn(clean_lab: Any, lab_connection: Callable[[str], Connection]) -> Connection:
    """web-1, whose /srv is emptied after the test."""
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture
def app(conn: Connection) -> str:
    """A fresh app name, with its shared .env in place."""
    name = f"dkrel{uuid.uuid4().hex[:6]}"
    conn.run(f"mkdir -p /srv/{name}/shared && echo PORT=8000 > /srv/{name}/shared/.env")
    return name


def writes(conn: Connection, since: int) -> list[str]:
    return [e.command for e in conn.log[since:] if e.write]


def apply_twice(conn: Connection, task: Task, undo: UndoStack | None = None) -> Result:
    mark = len(conn.log)
    check = task.run(conn, check=True)
    assert check.status is Status.CHANGED, check.message
    assert writes(conn, mark) == []
    first = task.run(conn, undo=undo)
    assert first.status is Status.CHANGED, first.message
    assert first.diff == check.diff
    mark = len(conn.log)
    second = task.run(conn)
    assert second.status is Status.OK, second.message
    assert writes(conn, mark) == []
    return first


def lay_out(conn: Connection, app: str, release_id: str, created: float, *,
            failed: str | None = None, complete: bool = True) -> None:
    """A release directory as an install leaves it (or interrupted, or marked failed)."""
    path = f"/srv/{app}/releases/{release_id}"
    lines = [f"mkdir -p {path}", f"echo {release_id} > {path}/VERSION"]
    if complete:
        lines.append(f"printf 'app={app}\\nrelease={release_id}\\nversion={release_id}\\n"
                     f"sha256={'ab' * 32}\\ncreated={created}\\n' > {path}/.dk-release")
    if failed is not None:
        lines.append(f"echo '{failed}' > {path}/.failed")
    lines.append(f"touch -d @{int(created)} {path}")
    conn.run("\n".join(lines))


def link(conn: Connection, app: str) -> str:
    return conn.run(["readlink", f"/srv/{app}/current"], check=False, write=False).stdout.strip()


# -- install --------------------------------------------------------------------------


def test_install_unpacks_builds_the_venv_links_shared_and_records(
        conn: Connection, host: Any, app: str, built: dict[str, Artifact]) -> None:
    v1 = built["v1"]
    task = releases.install(app, v1)
    first = apply_twice(conn, task)
    release, env = first.diff.splitlines()
    assert release == f"release: (none) -> v1 (sha256:{v1.sha256[:12]}, {v1.size} bytes)"
    assert re.fullmatch(rf"environment: \(none\) -> /srv/{app}/envs/[0-9a-f]{{24}} \(new\)", env)
    rel = f"/srv/{app}/releases/v1"
    assert host.file(f"{rel}/VERSION").content_string == "v1\n"
    assert host.file(f"{rel}/sampleapp/web.py").is_file
    # the venv was built from the bundled wheels, and imports what the app needs
    versions = conn.run(f"{rel}/venv/bin/python -c 'import gunicorn, psycopg, redis; "
                        "print(gunicorn.__version__, psycopg.__version__)'").stdout.split()
    assert versions == ["27.0.1", "3.3.9"]
    for path in (".env", "uploads", "logs"):
        assert host.file(f"{rel}/{path}").linked_to == f"/srv/{app}/shared/{path}"
    assert host.file(f"/srv/{app}/shared/uploads").is_directory
    assert host.file(f"/srv/{app}/shared/logs").is_directory
    record = host.file(f"{rel}/.dk-release").content_string.splitlines()
    assert record[:4] == [f"app={app}", "release=v1", "version=v1", f"sha256={v1.sha256}"]
    assert record[4].startswith("created=")
    assert host.file(f"/srv/{app}/releases").listdir() == ["v1"]  # the tarball is gone

    # the second run above sent one read; a re-run with a broken link only re-links
    conn.run(f"rm {rel}/logs")
    mark = len(conn.log)
    fix = releases.install(app, v1).run(conn)
    assert fix.status is Status.CHANGED
    assert fix.diff == f"link logs: (none) -> /srv/{app}/shared/logs"
    assert not [w for w in writes(conn, mark) if "tar" in w or "dk-upload" in w]
    assert host.file(f"{rel}/logs").linked_to == f"/srv/{app}/shared/logs"


def test_install_needs_the_shared_files_and_leaves_nothing_without_them(
        conn: Connection, host: Any, built: dict[str, Artifact]) -> None:
    app = f"dkrel{uuid.uuid4().hex[:6]}"
    result = releases.install(app, built["v1"]).run(conn)
    assert result.status is Status.FAILED
    assert result.message == (f"{app}: shared file(s) missing: /srv/{app}/shared/.env; create "
                              "them before installing (e.g. files.file for the .env)")
    assert not host.file(f"/srv/{app}").exists


def test_a_failed_venv_install_leaves_no_release(conn: Connection, host: Any, app: str,
                                                 built: dict[str, Artifact]) -> None:
    undo = UndoStack()
    result = releases.install(app, built["v1"], python="python3.99").run(conn, undo=undo)
    assert result.status is Status.FAILED
    assert result.message.startswith(f"{app}: installing release v1 in /srv/{app}/releases/v1 "
                                     "failed (exit code 127); nothing was left behind. Output:")
    assert result.message.endswith("python3.99: command not found")
    assert host.file(f"/srv/{app}/releases").listdir() == []
    assert undo.unwind(conn) == ([f"remove release /srv/{app}/releases/v1"], [])


def test_an_interrupted_install_is_redone(conn: Connection, host: Any, app: str,
                                          built: dict[str, Artifact]) -> None:
    lay_out(conn, app, "v1", 1_700_000_000, complete=False)
    conn.run(f"touch /srv/{app}/releases/v1/half-written")
    first = apply_twice(conn, releases.install(app, built["v1"]))
    assert first.diff.startswith("release: incomplete install -> v1 (sha256:")
    assert not host.file(f"/srv/{app}/releases/v1/half-written").exists
    assert host.file(f"/srv/{app}/releases/v1/.dk-release").contains(built["v1"].sha256)


def test_the_same_release_id_from_another_artifact_is_refused(
        conn: Connection, host: Any, app: str, built: dict[str, Artifact]) -> None:
    assert releases.install(app, built["v1"]).run(conn).changed
    undo = UndoStack()
    result = releases.install(app, built["v2"], release_id="v1").run(conn, undo=undo)
    assert result.status is Status.FAILED
    assert result.message == (
        f"{app}: release v1 is already installed from another artifact (sha256:"
        f"{built['v1'].sha256[:12]}, this one sha256:{built['v2'].sha256[:12]}); give this "
        "build another release id")
    assert undo.actions == []
    assert host.file(f"/srv/{app}/releases/v1/VERSION").content_string == "v1\n"


# -- switch, marks, rollback ---------------------------------------------------------------


def test_switch_is_atomic_idempotent_and_undone(conn: Connection, host: Any, app: str) -> None:
    lay_out(conn, app, "v1", 1_700_000_001)
    lay_out(conn, app, "v2", 1_700_000_002)
    base = f"/srv/{app}"
    assert apply_twice(conn, releases.switch(app, "v1")).diff == (
        f"state: absent -> link to {base}/releases/v1")
    undo = UndoStack()
    assert apply_twice(conn, releases.switch(app, "v2"), undo).diff == (
        f"target: {base}/releases/v1 -> {base}/releases/v2")
    assert link(conn, app) == f"{base}/releases/v2"
    assert host.file(base).listdir() == ["current", "releases", "shared"]  # no temp link left
    assert undo.unwind(conn) == ([f"point {base}/current back at {base}/releases/v1"], [])
    assert link(conn, app) == f"{base}/releases/v1"

    # a colour link for blue/green is the same task with another name
    apply_twice(conn, releases.switch(app, "v2", link="green"))
    assert host.file(f"{base}/green").linked_to == f"{base}/releases/v2"
    assert link(conn, app) == f"{base}/releases/v1"


def test_switch_refuses_a_missing_incomplete_or_failed_release(conn: Connection,
                                                               app: str) -> None:
    lay_out(conn, app, "v1", 1_700_000_001, failed="health check failed")
    lay_out(conn, app, "v2", 1_700_000_002, complete=False)
    cases = {
        "v3": f"{app}: release v3 is not installed in /srv/{app}/releases (releases: v2 "
              "(incomplete), v1 (failed))",
        "v2": f"{app}: release v2 is an incomplete install in /srv/{app}/releases (releases: "
              "v2 (incomplete), v1 (failed))",
        "v1": f"{app}: release v1 is marked failed (health check failed); mark it ok with "
              "releases.mark_ok, or pass allow_failed=True",
    }
    for release_id, message in cases.items():
        result = releases.switch(app, release_id).run(conn)
        assert (result.status, result.message) == (Status.FAILED, message)
    assert link(conn, app) == ""
    assert releases.switch(app, "v1", allow_failed=True).run(conn).changed


def test_marks_are_idempotent_listed_and_undone(conn: Connection, host: Any, app: str) -> None:
    lay_out(conn, app, "v1", 1_700_000_001)
    undo = UndoStack()
    first = apply_twice(conn, releases.mark_failed(app, "v1", reason="p95 1.2 s\nover 0.8 s"),
                        undo)
    assert first.diff == "state: ok -> failed"
    marker = host.file(f"/srv/{app}/releases/v1/.failed").content_string.splitlines()
    assert marker[0] == "p95 1.2 s over 0.8 s" and marker[1].startswith("at 20")
    (info,) = releases.list_releases(conn, app)
    assert (info.state, info.failed, info.reason) == ("failed", True, "p95 1.2 s over 0.8 s")
    assert undo.unwind(conn) == (["unmark release v1"], [])
    assert not host.file(f"/srv/{app}/releases/v1/.failed").exists
    apply_twice(conn, releases.mark_failed(app, "v1"))
    assert apply_twice(conn, releases.mark_ok(app, "v1")).diff == "state: failed -> ok"


def test_rollback_goes_to_the_previous_good_release(conn: Connection, app: str) -> None:
    for i, rid in enumerate(("v1", "v2", "v3", "v4"), start=1):
        lay_out(conn, app, rid, 1_700_000_000 + i, failed="broken" if rid == "v2" else None)
    releases.switch(app, "v4").run(conn)
    base = f"/srv/{app}/releases"
    undo = UndoStack()
    task = releases.rollback(app, from_release="v4")
    first = apply_twice(conn, task, undo)
    assert first.diff == f"target: {base}/v4 -> {base}/v3\nrelease v4: ok -> failed"
    assert link(conn, app) == f"{base}/v3"
    assert undo.unwind(conn) == ([f"point /srv/{app}/current back at {base}/v4",
                                  "unmark release v4"], [])
    assert link(conn, app) == f"{base}/v4"

    # without from_release every run steps back once more, skipping failed releases
    assert releases.rollback(app).run(conn).changed
    second = releases.rollback(app).run(conn)
    assert second.diff == f"target: {base}/v3 -> {base}/v1\nrelease v3: ok -> failed"
    assert link(conn, app) == f"{base}/v1"
    states = {r.release_id: r.state for r in releases.list_releases(conn, app)}
    assert states == {"v1": "current", "v2": "failed", "v3": "failed", "v4": "failed"}
    assert states["v3"] == "failed"
    reason = {r.release_id: r.reason for r in releases.list_releases(conn, app)}["v3"]
    assert reason == "rolled back to v1"

    last = releases.rollback(app).run(conn)
    assert last.status is Status.FAILED
    assert last.message == (f"{app}: no good release before v1 to roll back to (releases: "
                            "v4 (failed), v3 (failed), v2 (failed), v1 (current))")
    assert link(conn, app) == f"{base}/v1"


def test_rollback_without_a_current_release_fails(conn: Connection, app: str) -> None:
    result = releases.rollback(app).run(conn)
    assert result.status is Status.FAILED
    assert result.message == (f"{app}: /srv/{app}/current does not point at a release: "
                              "nothing to roll back")


# -- cleanup and listing ---------------------------------------------------------------------


def test_cleanup_keeps_n_good_the_links_and_the_rollback_target(conn: Connection, host: Any,
                                                               app: str) -> None:
    for i in range(1, 9):
        lay_out(conn, app, f"r{i}", 1_700_000_000 + i,
                failed="bad" if i in (5, 7) else None, complete=i != 3)
    releases.switch(app, "r8").run(conn)
    releases.switch(app, "r1", link="blue").run(conn)
    conn.run(f"touch /srv/{app}/releases/r8/.failed")  # current, yet marked: still kept
    first = apply_twice(conn, releases.cleanup(app, keep=1))
    assert first.diff == ("release r2: ok -> absent\nrelease r3: incomplete -> absent\n"
                          "release r4: ok -> absent\nrelease r5: failed -> absent")
    left = host.file(f"/srv/{app}/releases").listdir()
    # r8: current; r6: keep=1 newest good and the rollback target; r7: newest failed;
    # r1: blue
    assert sorted(left) == ["r1", "r6", "r7", "r8"]
    undo = UndoStack()
    conn.run(f"rm /srv/{app}/blue")
    assert releases.cleanup(app, keep=1, keep_failed=0).run(conn, undo=undo).diff == (
        "release r1: ok -> absent\nrelease r7: failed -> absent")
    assert undo.unwind(conn) == ([], ["restore releases r1, r7: removed releases cannot be "
                                      "restored: r1, r7"])


def test_list_releases_reads_states_checksums_and_times(conn: Connection, app: str,
                                                        built: dict[str, Artifact]) -> None:
    assert releases.list_releases(conn, app) == []
    lay_out(conn, app, "v0", 1_600_000_000, complete=False)
    releases.install(app, built["v1"]).run(conn)
    lay_out(conn, app, "v2", 4_000_000_000.5, failed="slow")
    releases.switch(app, "v1").run(conn)
    mark = len(conn.log)
    listed = releases.list(conn, app)
    assert len(conn.log) == mark + 1 and writes(conn, mark) == []
    assert [(r.release_id, r.state) for r in listed] == [
        ("v2", "failed"), ("v1", "current"), ("v0", "incomplete")]
    v2, v1, v0 = listed
    assert v1.sha256 == built["v1"].sha256 and v1.version == "v1" and v1.links == ("current",)
    assert v2.created == 4_000_000_000.5 and v2.created_iso == "2096-10-02T07:06:40Z"
    assert (v0.sha256, v0.created) == (None, 1_600_000_000)


# -- the cleanup rule, without a host -------------------------------------------------------


def _rel(rid: str, created: float, *, failed: bool = False, complete: bool = True) -> ReleaseInfo:
    return ReleaseInfo(rid, f"/srv/a/releases/{rid}", complete, failed, created)


def test_removable_never_counts_failed_and_keeps_the_previous_good() -> None:
    state = AppReleases("a", "/srv", {r.release_id: r for r in [
        _rel("r1", 1), _rel("r2", 2), _rel("r3", 3, failed=True), _rel("r4", 4),
        _rel("r5", 5, failed=True), _rel("r6", 6, complete=False)]},
        {"current": "/srv/a/releases/r4"})
    assert [r.release_id for r in removable(state, keep=2, keep_failed=0)] == [
        "r1", "r3", "r5", "r6"]
    # current r4, keep=1: r2 stays as the rollback target (r3 is failed)
    assert [r.release_id for r in removable(state, keep=1, keep_failed=1)] == [
        "r1", "r3", "r6"]
    assert state.previous_good("r4") == state.releases["r2"]
    assert state.target("current") == "r4"
    assert AppReleases("a", "/srv", {}, {"current": "/elsewhere/r4"}).target("current") is None
