"""The journal without hosts: deploy ids, entries, history parsing, local run files,
and the lock and append scripts run for real with the local ``sh``.

``LocalShell`` runs each command with ``sh -c`` on this machine, with the same
signature as :meth:`Connection.run`, so the host-side scripts (``mkdir`` lock,
``flock`` guard, ``dd`` append) are exercised for real against a temporary
``STATE_ROOT``; the same scripts run over SSH in tests/lab/test_journal_lock.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from deploykit import journal
from deploykit.connection import CommandResult, Connection, LoggedCommand
from deploykit.errors import ConfigError, TaskError
from deploykit.journal import HistoryEntry, LockHolder, LockInfo
from deploykit.result import Result, RunReport, Status
from deploykit.secrets import Secret

APP = "shop"
NOW = datetime(2026, 11, 25, 17, 30, 0, tzinfo=UTC)


class LocalShell:
    """Runs commands with the local sh, like Connection.run on a host (a real shell)."""

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.secrets: set[Secret] = set()
        self.log: list[LoggedCommand] = []

    def run(self, command: str, *, write: bool = True, check: bool = True,
            stdin: str | bytes | None = None, timeout: float | None = None,
            task: str | None = None) -> CommandResult:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        started = time.monotonic()
        out = subprocess.run(["sh", "-c", command], input=data, capture_output=True,
                             timeout=timeout, check=False)
        self.log.append(LoggedCommand(command, write, out.returncode))
        assert not check or out.returncode == 0, out.stderr
        return CommandResult(self.name, command, out.returncode, out.stdout.decode(),
                             out.stderr.decode(), time.monotonic() - started, out.stdout)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(journal.ids, "STATE_ROOT", str(tmp_path / "state"))
    return tmp_path / "state"


def local(name: str = "local") -> Connection:
    return cast(Connection, LocalShell(name))


# -- deploy id --------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_deploy_id_is_utc_time_and_short_sha(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    git(tmp_path, "add", "f")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "m")
    sha = git(tmp_path, "rev-parse", "--short=7", "HEAD")
    assert re.fullmatch(rf"20261125T173000Z-000-{sha}-[0-9a-f]{{4}}",
                        journal.new_deploy_id(tmp_path, now=NOW))
    assert re.fullmatch(r"\d{8}T\d{6}Z-\d{3}-[0-9a-f]{7}-[0-9a-f]{4}",
                        journal.new_deploy_id(tmp_path))


def test_deploy_id_falls_back_to_nogit(tmp_path: Path) -> None:
    assert re.fullmatch(r"20261125T173000Z-000-nogit-[0-9a-f]{4}",
                        journal.new_deploy_id(tmp_path, now=NOW))
    git(tmp_path, "init", "-q")  # a repository without any commit
    assert re.fullmatch(r"20261125T173000Z-000-nogit-[0-9a-f]{4}",
                        journal.new_deploy_id(tmp_path, now=NOW))


# -- entries and history parsing ----------------------------------------------------------------


def test_entry_line_round_trip_redacts_secrets() -> None:
    password = Secret("hunter2-very-secret")
    entry = HistoryEntry(event="end", id="d1", app=APP, who="alice@ctl", host="web-1",
                         time="2026-11-25T17:30:00Z", version_from="v1", version_to="v2",
                         strategy="rolling", result="failed", duration=12.5,
                         steps={"failed": ["web-1: migrate: password hunter2-very-secret"]},
                         message="näive \"quote\"\nnewline", data={"token": password})
    line = entry.to_line([password])
    assert line.endswith("\n") and line.count("\n") == 1
    assert "hunter2" not in line
    back = journal.parse_history(line)[0]
    assert back.steps == {"failed": ["web-1: migrate: password ********"]}
    assert back.data == {"token": "********"}
    assert back.message == "näive \"quote\"\nnewline"
    assert (back.version_from, back.version_to, back.result, back.duration) == (
        "v1", "v2", "failed", 12.5)


def test_a_huge_entry_loses_its_details_but_stays_one_line() -> None:
    entry = HistoryEntry(event="end", id="d1", app=APP, steps={"failed": ["x" * 1000] * 100},
                         message="m" * 5000)
    line = entry.to_line()
    data = json.loads(line)
    assert len(line.encode()) < 64 * 1024
    assert data["steps"] == {"truncated": True} and len(data["message"]) == 2000


def test_parse_history_skips_lines_that_are_not_entries(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    good = HistoryEntry(event="start", id="d1", app=APP).to_line()
    text = good + "{half a line\n" + "[1, 2]\n" + "\n" + json.dumps({"no": "event"}) + "\n" + good
    assert [e.id for e in journal.parse_history(text)] == ["d1", "d1"]
    assert caplog.text.count("history line") == 3


def test_summarize_history_merges_start_and_end_and_shows_crashes() -> None:
    def e(event: str, deploy: str, **kw: Any) -> HistoryEntry:
        return HistoryEntry(event=event, id=deploy, app=APP, host="web-1",
                            time=f"t-{event}-{deploy}", **kw)

    entries = [e("start", "d1", version_from="v1", version_to="v2", strategy="rolling"),
               e("end", "d1", result="succeeded", duration=3.0),
               e("start", "d2", version_to="v3"),
               e("lock_broken", "d3"),
               e("start", "d3", kind="rollback"), e("end", "d3", kind="rollback",
                                                    result="rolled_back")]
    d1, d2, d3 = journal.summarize_history(entries)
    assert (d1.result, d1.version_from, d1.version_to, d1.strategy, d1.duration,
            d1.started, d1.ended) == ("succeeded", "v1", "v2", "rolling", 3.0,
                                      "t-start-d1", "t-end-d1")
    assert not d1.running_or_crashed
    assert d2.running_or_crashed and d2.result is None
    assert (d3.kind, d3.result) == ("rollback", "rolled_back")


def test_steps_summary_per_host_and_for_the_fleet() -> None:
    report = RunReport(run_id="d1")
    report.add(Result("web-1", "copy", Status.CHANGED))
    report.add(Result("web-1", "migrate", Status.FAILED, message="exit 3"))
    report.add(Result("web-2", "copy", Status.OK))
    report.host("web-1").undo_failed.append("restore config: gone")
    assert journal.steps_summary(report, "web-1") == {
        "counts": {"ok": 0, "changed": 1, "failed": 1, "skipped": 0},
        "fleet": {"ok": 1, "changed": 1, "failed": 1, "skipped": 0},
        "failed": ["web-1: migrate: exit 3", "web-1: not undone: restore config: gone"]}
    assert journal.steps_summary(report)["counts"]["ok"] == 1


# -- lock holder and messages -----------------------------------------------------------------


def test_lock_message_names_holder_deploy_pid_time_and_host() -> None:
    holder = LockHolder(user="alice", controller="ctl-1", deploy_id="20261125T173000Z-abc1234",
                        pid=4242, started="2026-11-25T17:30:00Z", token="t")
    fresh = LockInfo(host="web-1", holder=holder, age=95, ttl=3600)
    assert fresh.describe() == ("locked by alice@ctl-1 (deploy 20261125T173000Z-abc1234, pid "
                                "4242) since 2026-11-25T17:30:00Z on web-1; held for 95 s")
    stale = LockInfo(host="web-1", holder=holder, age=7500, ttl=3600)
    assert stale.stale and not fresh.stale
    assert stale.describe().endswith(
        "on web-1; STALE: held for 2.1 h, longer than the lock TTL of 60 min (the deploy "
        "may have crashed); break it with --break-lock, or invoke unlock --force")
    assert LockInfo("db-1", None, 3).describe() == (
        "locked (holder unknown: no readable holder.json) on db-1; held for 3 s")
    assert LockHolder.from_json(holder.to_json()) == holder
    assert LockHolder.from_json("{broken") is None
    assert "token" not in holder.public()


@pytest.mark.parametrize("app", ["", "..", "a/b", "-x", "x y", "a" * 65, "$(id)"])
def test_invalid_app_names_are_refused_before_any_command(app: str) -> None:
    shell = LocalShell()
    with pytest.raises(ConfigError, match="invalid app name"), \
            journal.fleet_lock([cast(Connection, shell)], app, "d1"):
        pass
    assert shell.log == []


def test_invalid_results_and_kinds_are_refused(root: Path) -> None:
    with pytest.raises(ConfigError, match="deploy result must be one of"), \
            journal.fleet_lock([local()], APP, "d1") as lock:
        lock.end("done")  # type: ignore[arg-type]
    assert not (root / APP / "lock").exists()
    with pytest.raises(ConfigError, match="kind must be"), \
            journal.fleet_lock([local()], APP, "d1", kind="upgrade"):  # type: ignore[arg-type]
        pass


# -- the scripts, run with the local sh ---------------------------------------------------------


def test_concurrent_appends_never_interleave(root: Path) -> None:
    """20 writers x 10 entries of ~20 KB each: every line must come back whole."""
    def writer(n: int) -> None:
        conn = local(f"w{n}")
        for i in range(10):
            entry = HistoryEntry(event="start", id=f"w{n}-{i}", app=APP,
                                 message=chr(65 + n) * 20000)
            journal.append_history(conn, APP, [entry])

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(writer, range(20)))
    lines = (root / APP / "history.jsonl").read_text().splitlines()
    assert len(lines) == 200
    entries = [json.loads(line) for line in lines]  # a torn line would not parse
    assert {e["id"] for e in entries} == {f"w{n}-{i}" for n in range(20) for i in range(10)}
    assert all(set(e["message"]) == {e["message"][0]} for e in entries)


class DroppingShell(LocalShell):
    """Loses the end of stdin, as a connection cut in the middle of an upload would."""

    def run(self, command: str, *, stdin: str | bytes | None = None,
            **options: Any) -> CommandResult:
        return super().run(command, stdin=stdin[:-7] if stdin else stdin, **options)


def test_an_entry_cut_off_in_transit_is_not_written_at_all(root: Path) -> None:
    journal.append_history(local(), APP, [HistoryEntry(event="start", id="d0", app=APP)])
    with pytest.raises(TaskError, match="history of shop not written: history entry arrived "
                                        "incomplete, not written"):
        journal.append_history(cast(Connection, DroppingShell()), APP,
                               [HistoryEntry(event="start", id="d1", app=APP)])
    assert [e.id for e in journal.history(local(), APP)] == ["d0"]
    assert sorted(p.name for p in (root / APP).iterdir()) == ["history.jsonl"]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_release_leaves_a_lock_taken_by_someone_else_alone(root: Path) -> None:
    conn = local()
    mine = dataclasses.replace(LockHolder.for_this_process("d1", APP), pid=dead_pid())
    theirs = LockHolder.for_this_process("d2", APP)
    assert journal.acquire_lock(conn, APP, mine).acquired
    assert journal.unlock(conn, APP, force=True) is not None   # somebody broke it
    assert journal.acquire_lock(conn, APP, theirs).acquired     # and took it
    assert journal.release_lock(conn, APP, mine) == "foreign"
    info = journal.lock_status(conn, APP)
    assert info is not None and info.holder == theirs
    assert journal.release_lock(conn, APP, theirs) == "released"
    assert journal.release_lock(conn, APP, theirs) == "absent"


def test_lock_files_are_private(root: Path) -> None:
    conn = local()
    holder = LockHolder.for_this_process("d1", APP)
    journal.acquire_lock(conn, APP, holder,
                         entries=[HistoryEntry(event="start", id="d1", app=APP)])
    assert stat.S_IMODE((root / APP).stat().st_mode) == 0o750
    assert stat.S_IMODE((root / APP / "history.jsonl").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / APP / "lock" / "holder.json").stat().st_mode) == 0o640
    assert json.loads((root / APP / "lock" / "holder.json").read_text())["token"] == holder.token


def test_history_limit_and_absent_history(root: Path) -> None:
    conn = local()
    assert journal.history(conn, APP) == []
    journal.append_history(conn, APP, [HistoryEntry(event="start", id=f"d{i}", app=APP)
                                       for i in range(30)])
    assert [e.id for e in journal.history(conn, APP, limit=3)] == ["d27", "d28", "d29"]
    with pytest.raises(ConfigError, match="positive integer"):
        journal.history(conn, APP, limit=0)


# -- local run files ----------------------------------------------------------------------------


def test_run_report_goes_to_deploykit_runs_redacted_and_private(tmp_path: Path) -> None:
    token = Secret("tok-9f8e7d6c")
    report = RunReport(run_id="20261125T173000Z-abc1234", secrets=[token])
    report.add(Result("web-1", "notify", Status.OK, message="sent with tok-9f8e7d6c"))
    path = journal.write_run_report(report, base=tmp_path / ".deploykit" / "runs")
    assert path == tmp_path / ".deploykit/runs/20261125T173000Z-abc1234.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "tok-9f8e7d6c" not in path.read_text()
    assert json.loads(path.read_text())["hosts"]["web-1"]["results"][0]["message"] == (
        "sent with ********")
    files = journal.run_files("d1")
    assert (str(files.json), str(files.log)) == (".deploykit/runs/d1.json",
                                                 ".deploykit/runs/d1.log")
    with pytest.raises(ConfigError, match="invalid deploy id"):
        journal.run_files("../../etc/passwd")


@pytest.fixture
def quiet_deploykit_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("deploykit")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_run_log_captures_deploykit_records_redacted(tmp_path: Path,
                                                     quiet_deploykit_logger: logging.Logger
                                                     ) -> None:
    password = Secret("pw-1a2b3c4d5e")
    path = journal.run_files("d1", tmp_path / "runs").log
    logger = quiet_deploykit_logger
    logger.setLevel(logging.WARNING)
    with journal.RunLog(path, secrets=[password]) as run_log:
        assert logger.level == logging.INFO
        run_log.write("deploy d1 started")
        logging.getLogger("deploykit.notify").warning("webhook said pw-1a2b3c4d5e")
        token = Secret("late-secret-value")
        run_log.add_secrets([token])
        logging.getLogger("deploykit.runner").info("late-secret-value in output")
        logging.getLogger("deploykit.connection").debug("below the level: not written")
        logging.getLogger("other").warning("not deploykit: not written")
    logging.getLogger("deploykit").warning("after close: not written")
    assert logger.level == logging.WARNING
    text = path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "deploy d1 started" in text
    assert "webhook said ********" in text and "******** in output" in text
    assert "pw-1a2b3c4d5e" not in text and "late-secret-value" not in text
    assert "not written" not in text


def test_deploy_ids_sort_by_time_within_a_second(tmp_path: Path) -> None:
    early, late = (journal.new_deploy_id(tmp_path, now=NOW.replace(microsecond=us))
                   for us in (9_000, 450_000))
    assert early < late  # --retry-failed takes the last report by name
    assert re.fullmatch(r"20261125T173000Z-009-nogit-[0-9a-f]{4}", early)
    assert re.fullmatch(r"20261125T173000Z-450-nogit-[0-9a-f]{4}", late)


def test_deploy_ids_sort_by_time_across_commits_within_a_second(tmp_path: Path) -> None:
    """Two deploys in the same second from different commits: the later one sorts last,
    whatever the commits' hashes (issue 17 item 10)."""
    ids = []
    for n, us in enumerate((100_000, 600_000)):
        repo = tmp_path / f"r{n}"
        repo.mkdir()
        git(repo, "init", "-q")
        for attempt in range(64):  # the later deploy's commit must sort first by hash
            (repo / "f").write_text(f"{n}-{attempt}")
            git(repo, "add", "f")
            git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit",
                "-qm", "m")
            sha = git(repo, "rev-parse", "--short=7", "HEAD")
            if (n == 0) == (sha[0] >= "8"):
                break
        ids.append(journal.new_deploy_id(repo, now=NOW.replace(microsecond=us)))
    early, late = ids
    assert early.split("-")[2][0] >= "8" > late.split("-")[2][0] or \
        early.split("-")[1][0] >= "8" > late.split("-")[1][0]
    assert sorted([late, early]) == [early, late]
