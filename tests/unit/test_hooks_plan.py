"""Hooks, lock re-entrance and waiting, --retry-failed planning, without hosts.

Executable hooks run for real (small sh scripts in a temporary hooks/ directory);
the lock scripts run with the local sh (``LocalShell`` of test_journal.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from test_journal import LocalShell

from deploykit import hooks, journal, retry
from deploykit.connection import Connection
from deploykit.errors import ConfigError, LockHeldError
from deploykit.hooks import HookContext, HookError, Hooks
from deploykit.result import Result, RunReport, Status
from deploykit.secrets import Secret

APP = "shop"
SENTINEL = "sentinel-hook-77d1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (hooks.HOOK_ENV, journal.DEPLOY_ID_ENV):
        monkeypatch.delenv(name, raising=False)


def write_hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def context(point: str, **changes: object) -> HookContext:
    values: dict[str, object] = {"deploy_id": "20260101T000000Z-abc1234", "app": APP,
                                 "version": "v2", "hosts": ("web-1", "web-2")}
    values.update(changes)
    return HookContext(point, **values)  # type: ignore[arg-type]


def make(tmp_path: Path, **options: object) -> tuple[Hooks, list[str], list[Result]]:
    lines: list[str] = []
    recorded: list[Result] = []
    made = Hooks(tmp_path / "hooks", tmp_path, echo=lines.append, record=recorded.append,
                 **options)  # type: ignore[arg-type]
    return made, lines, recorded


def test_executable_hooks_get_the_context_in_their_environment(tmp_path: Path) -> None:
    write_hook(tmp_path / "hooks", "post_deploy",
               'env | grep ^DEPLOYKIT_ | sort > "$PWD/seen"; echo deployed "$DEPLOYKIT_VERSION"')
    write_hook(tmp_path / "hooks", "post_deploy.2-second", "echo second")
    write_hook(tmp_path / "hooks", "post_deploy.sample", "exit 9")  # ignored
    write_hook(tmp_path / "hooks", "pre_deploy", "exit 9")  # another point
    runner, lines, recorded = make(tmp_path)
    results = runner.run(context("post_deploy", result="succeeded", message="v2 on green",
                                 config=tmp_path / "deploykit.yml"))
    assert [(r.task, r.status) for r in results] == [
        ("hook post_deploy: hooks/post_deploy", Status.OK),
        ("hook post_deploy: hooks/post_deploy.2-second", Status.OK)]
    assert recorded == results
    assert lines == ["-- hook post_deploy: hooks/post_deploy", "   [post_deploy] deployed v2",
                     "-- hook post_deploy: hooks/post_deploy.2-second",
                     "   [post_deploy] second"]
    told = set(context("post_deploy", config=tmp_path).env())  # not DEPLOYKIT_LAB_NAME ...
    seen = [line for line in (tmp_path / "seen").read_text().splitlines()
            if line.split("=", 1)[0] in told]
    assert seen == [
        f"DEPLOYKIT_APP={APP}", f"DEPLOYKIT_CONFIG={tmp_path / 'deploykit.yml'}",
        "DEPLOYKIT_DEPLOY_ID=20260101T000000Z-abc1234", "DEPLOYKIT_HOOK=post_deploy",
        "DEPLOYKIT_HOSTS=web-1,web-2", "DEPLOYKIT_KIND=deploy", "DEPLOYKIT_MESSAGE=v2 on green",
        "DEPLOYKIT_RESULT=succeeded", "DEPLOYKIT_VERSION=v2"]


def test_a_failing_pre_hook_raises_naming_it_with_its_output_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DK_HOOK_SECRET", SENTINEL)
    write_hook(tmp_path / "hooks", "pre_deploy.1-check",
               'echo "checking with $DK_HOOK_SECRET"; echo "ticket DEPLOY-1 is not approved" >&2; '
               "exit 4")
    write_hook(tmp_path / "hooks", "pre_deploy.2-never", "touch never-ran")
    runner, lines, recorded = make(tmp_path, secrets=[Secret(SENTINEL)])
    with pytest.raises(HookError) as caught:
        runner.run(context("pre_deploy"))
    error = caught.value
    assert (error.point, error.hook) == ("pre_deploy", "hooks/pre_deploy.1-check")
    assert error.describe("nothing was changed") == (
        "hook pre_deploy (hooks/pre_deploy.1-check) exited with code 4; nothing was changed; "
        "its output ended with:\nchecking with ********\nticket DEPLOY-1 is not approved")
    assert SENTINEL not in str(error) and SENTINEL not in recorded[0].message
    assert recorded[0].status is Status.FAILED and len(recorded) == 1
    assert not (tmp_path / "never-ran").exists()
    assert SENTINEL in " ".join(lines)  # the raw echo; invoke's Output redacts what it prints


def test_a_failing_post_hook_is_a_warning(tmp_path: Path) -> None:
    write_hook(tmp_path / "hooks", "on_failure", "exit 1")
    runner, lines, _ = make(tmp_path)
    [result] = runner.run(context("on_failure", result="failed"))
    assert result.status is Status.FAILED
    assert lines[-1] == ("warning: hook on_failure (hooks/on_failure) exited with code 1 and "
                         "printed nothing")


def test_a_hook_past_its_timeout_is_killed(tmp_path: Path) -> None:
    write_hook(tmp_path / "hooks", "pre_switch", 'echo started; sleep 30 & wait')
    runner, _, _ = make(tmp_path, timeout=0.5)
    with pytest.raises(HookError, match=r"hook pre_switch \(hooks/pre_switch\) did not finish "
                                        r"within 0.5 s \(hook_timeout\) and was killed"):
        runner.run(context("pre_switch"))


def test_a_hook_file_that_cannot_run_is_refused_before_anything(tmp_path: Path) -> None:
    path = write_hook(tmp_path / "hooks", "pre_connect", "true", mode=0o644)
    runner, _, _ = make(tmp_path)
    with pytest.raises(ConfigError, match=rf"hook {path} is not executable \(chmod \+x"):
        runner.check()


def test_registered_callables_and_no_recursion(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    @hooks.hook("pre_deploy")
    def remember(ctx: HookContext) -> None:
        seen.append((ctx.point, os.environ.get(journal.DEPLOY_ID_ENV),
                     os.environ.get(hooks.HOOK_ENV)))

    def refuse(ctx: HookContext) -> None:
        raise RuntimeError(f"change freeze until friday ({ctx.version})")

    hooks.register("pre_deploy", refuse)
    try:
        assert hooks.registered("pre_deploy")[-2:] == [remember, refuse]
        runner, _, _ = make(tmp_path)
        with pytest.raises(HookError, match=r"^hook pre_deploy \(test_"
                                            r"registered_callables_and_no_recursion.<locals>."
                                            r"refuse\) raised RuntimeError: change freeze until "
                                            r"friday \(v2\)$"):
            runner.run(context("pre_deploy"))
        assert seen == [("pre_deploy", "20260101T000000Z-abc1234", "pre_deploy")]
        assert os.environ.get(journal.DEPLOY_ID_ENV) is None  # restored after the call
        os.environ[hooks.HOOK_ENV] = "post_deploy"  # a run started by a hook
        nested, _, _ = make(tmp_path)
        assert nested.run(context("pre_deploy")) == [] and seen == [seen[0]]
    finally:
        hooks.unregister("pre_deploy", remember)
        hooks.unregister("pre_deploy", refuse)
    with pytest.raises(ConfigError, match="unknown hook point 'post_build'"):
        hooks.register("post_build", remember)


@pytest.mark.parametrize(("kind", "result", "points"), [
    ("deploy", "succeeded", ["post_deploy"]),
    ("deploy", "failed", ["on_failure"]),
    ("deploy", "aborted", ["on_failure"]),
    ("deploy", "rolled_back", ["on_failure", "on_rollback"]),
    ("rollback", "succeeded", ["on_rollback"]),
    ("rollback", "failed", ["on_failure", "on_rollback"])])
def test_which_points_follow_a_run(kind: str, result: str, points: list[str]) -> None:
    assert hooks.after_points(kind, result) == points


# -- the lock: re-entrant for the outer deploy, waiting --------------------------------------


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(journal.ids, "STATE_ROOT", str(tmp_path / "state"))
    yield tmp_path / "state"


def conns() -> list[Connection]:
    return [cast(Connection, LocalShell("web-1"))]


def test_the_lock_is_reentrant_for_the_outer_deploy_only(state: Path) -> None:
    with journal.fleet_lock(conns(), APP, "outer-1", nest_token="hooks-only") as outer:
        with pytest.raises(LockHeldError, match=r"locked by .* \(deploy outer-1,"):
            with journal.fleet_lock(conns(), APP, "stranger-2"):
                pass
        # knowing the outer deploy's id (invoke status shows it) is not enough
        for proof in ("", "guessed"):
            with pytest.raises(LockHeldError, match=r"\(deploy outer-1,"):
                with journal.fleet_lock(conns(), APP, "stranger-3", outer="outer-1",
                                        proof=proof):
                    pass
        with journal.fleet_lock(conns(), APP, "inner-3", outer="outer-1",
                                proof="hooks-only") as inner:
            assert inner.nested == {"web-1"}
        info = journal.lock_status(conns()[0], APP)  # the inner run left it to its owner
        assert info is not None and info.holder == outer.holder
    assert journal.lock_status(conns()[0], APP) is None
    events = [(e.event, e.id, e.result) for e in journal.history(conns()[0], APP)]
    assert "hooks-only" not in (state / APP / "history.jsonl").read_text()
    assert events == [("start", "outer-1", None), ("start", "inner-3", None),
                      ("end", "inner-3", "succeeded"), ("end", "outer-1", "succeeded")]


def test_lock_wait_takes_the_lock_once_it_is_free(state: Path) -> None:
    holding = journal.fleet_lock(conns(), APP, "holder-1")
    lock = holding.__enter__()
    waits: list[str] = []

    def on_wait(error: LockHeldError, waited: float) -> None:
        waits.append(error.message)
        if len(waits) == 2:
            lock.end("succeeded")
            holding.__exit__(None, None, None)

    with journal.fleet_lock(conns(), APP, "waiter-2", wait=60, poll=0.05,
                            on_wait=on_wait) as waiter:
        assert waiter.hosts == ["web-1"]
    assert len(waits) == 2 and "(deploy holder-1," in waits[0]
    ids = [(e.event, e.id) for e in journal.history(conns()[0], APP)]
    assert ids == [("start", "holder-1"), ("end", "holder-1"), ("start", "waiter-2"),
                   ("end", "waiter-2")]


def test_lock_wait_gives_up_naming_the_holder(state: Path) -> None:
    with journal.fleet_lock(conns(), APP, "holder-1"):
        with pytest.raises(LockHeldError, match=r"\(deploy holder-1, .*; gave up after waiting "
                                                r"\d+ s$"):
            with journal.fleet_lock(conns(), APP, "waiter-2", wait=0.3, poll=0.05):
                pass


def test_lock_wait_reporter_shows_the_holder_once_then_progress() -> None:
    lines: list[str] = []
    reporter = retry.LockWaitReporter(300, lines.append, every=0)
    held = LockHeldError("locked by a@ctl (deploy d1, pid 4) since t on web-1; held for 3 s")
    reporter(held, 1)
    reporter(LockHeldError(held.message.replace("3 s", "5 s")), 65)
    assert lines == ["   waiting up to 5 min 00 s for the lock: locked by a@ctl (deploy d1, "
                     "pid 4) since t on web-1; held for 3 s",
                     "   still waiting for the lock: 1 min 05 s of 5 min 00 s"]
    stop = threading.Event()

    def interrupted() -> None:
        stop.set()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retry.LockWaitReporter(300, lines.append, interrupted)(held, 1)
    assert stop.is_set()


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("5m", 300), ("5 min", 300), ("1.5h", 5400), (None, 0), ("", 0)])
def test_parse_duration(text: str | None, seconds: float) -> None:
    assert retry.parse_duration(text) == seconds


def test_parse_duration_refuses_nonsense() -> None:
    with pytest.raises(ConfigError, match=r"--lock-wait: 'soon' is not a duration \(e.g. 90s"):
        retry.parse_duration("soon")


# -- --retry-failed ------------------------------------------------------------------------------


def run_report(runs: Path, deploy_id: str, result: str, *, unreachable: str | None = None,
               failed: str | None = None, ok: tuple[str, ...] = ()) -> None:
    report = RunReport(run_id=deploy_id)
    for host in ok:
        report.add(Result(host, "releases.install", Status.CHANGED))
    if failed:
        report.add(Result(failed, "health gate: green /health", Status.FAILED,
                          message="503 after 40 tries\nmore"))
    if unreachable:
        report.mark_unreachable(unreachable, "connection refused")
    report.add(Result("(controller)", "deploy", Status.FAILED if result != "succeeded" else
                      Status.CHANGED, data={"result": result, "version": "v2",
                                            "hosts": ["web-1", "web-2"]}))
    journal.write_run_report(report, deploy_id, runs)


def test_retry_targets_the_failed_hosts_of_the_last_deploy(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run_report(runs, "20260101T000000Z-aaa0000", "failed", failed="web-1", ok=("web-2",))
    run_report(runs, "20260102T000000Z-aaa0000", "failed", unreachable="web-2",
               ok=("web-1", "db-1"))
    run_report(runs, "20260103T000000Z-aaa0000", "checked")  # check runs do not count
    plan = retry.retry_plan(runs, ["web-1", "web-2"], "db-1")
    assert (plan.deploy_id, plan.version, plan.hosts) == ("20260102T000000Z-aaa0000", "v2",
                                                          ["web-2"])
    assert plan.reasons == {"web-2": "unreachable: connection refused"}
    run_report(runs, "20260104T000000Z-aaa0000", "failed", unreachable="db-1")
    assert retry.retry_plan(runs, ["web-1", "web-2"], "db-1").hosts == ["web-1", "web-2"]
    run_report(runs, "20260105T000000Z-aaa0000", "succeeded", ok=("web-1", "web-2"))
    with pytest.raises(ConfigError, match=r"the last deploy \(20260105T000000Z-aaa0000, "
                                          r"succeeded\) has no failed or unreachable host"):
        retry.retry_plan(runs, ["web-1", "web-2"], "db-1")
    with pytest.raises(ConfigError, match="no deploy run report in"):
        retry.retry_plan(tmp_path / "none", ["web-1"])
