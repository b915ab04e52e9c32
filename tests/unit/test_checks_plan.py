"""Pre-flight checks without hosts: probe output in, verdicts out.

Recorded probe output goes through ``check.parse`` and ``check.evaluate``
(pure functions); the host probe snippets themselves run with the local ``sh``
against temporary files (the ``.env`` parser, the backup verification, df and
/proc/meminfo); controller checks run for real: the CI status API is a real
HTTP server on 127.0.0.1, git runs on temporary repositories, TCP connects go
to loopback ports.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_notify import Receiver, closed_port

from deploykit.errors import ConfigError, TaskError
from deploykit.inventory import Host
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.tasks import checks

TOKEN = "ghp_t0ken5ecret9"
SHA = "0123456789abcdef0123456789abcdef01234567"


def sh(script: str) -> str:
    """Run a probe snippet with the local sh; a probe never fails."""
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def judge(check: checks.Check, output: str, host: Host | None = None) -> checks.Verdict:
    return check.evaluate(host, check.parse(output))


# -- resources --------------------------------------------------------------------------------


def test_resources_pass_lists_free_disk_and_memory() -> None:
    check = checks.resources(["/", "/srv"], min_free_mb=1024, min_memory_mb=256)
    out = ("disk 0 10485760 5242880\ndisk 1 2097152 1572864\n"
           "mem MemTotal: 4194304\nmem MemAvailable: 1048576\n")
    verdict = judge(check, out)
    assert verdict.problems == []
    assert verdict.info == ("disk / has 5.0 GiB free (50.0% of 10.0 GiB); disk /srv has "
                            "1.5 GiB free (75.0% of 2.0 GiB); memory 1.0 GiB available")
    assert verdict.data["disk"]["/srv"] == {"free_mb": 1536, "size_mb": 2048,
                                            "free_percent": 75.0}


def test_resources_names_each_shortage() -> None:
    check = checks.resources(["/", "/gone"], min_free_mb=100, min_free_percent=10,
                             min_memory_mb=512)
    out = "disk 0 1048576 51200\ndisk 1 missing\nmem MemAvailable: 262144\n"
    assert judge(check, out).problems == [
        "disk: / has 50.0 MiB free (4.9% of 1.0 GiB), needs at least 100.0 MiB and at least 10%",
        "disk: /gone does not exist (df failed)",
        "memory: 256.0 MiB available, needs at least 512.0 MiB",
    ]


def test_resources_percentage_alone_can_fail_and_memory_can_be_ignored() -> None:
    check = checks.resources(["/"], min_free_mb=0, min_free_percent=20, min_memory_mb=None)
    verdict = judge(check, "disk 0 1000000 100000\n")
    assert verdict.problems == [
        "disk: / has 97.7 MiB free (10.0% of 976.6 MiB), needs at least 20%"]


def test_resources_probe_runs_df_and_meminfo_in_one_snippet(tmp_path: Path) -> None:
    check = checks.resources([str(tmp_path), str(tmp_path / "absent")], min_free_mb=0,
                             min_memory_mb=1)
    facts = check.parse(sh(check.probe_script()))
    assert facts["disks"][str(tmp_path)]["size_kib"] > 0
    assert facts["disks"][str(tmp_path / "absent")] is None
    assert facts["memory_kib"]["MemAvailable"] > 0


def test_resources_refuses_relative_paths_and_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="absolute"):
        checks.resources(["srv"])
    with pytest.raises(ValueError, match="min_free_percent"):
        checks.resources(min_free_percent=120)


# -- ports ------------------------------------------------------------------------------------

SS = ("listen 0.0.0.0:22\nlisten [::]:22\nlisten 127.0.0.53%lo:53\nlisten *:80\n"
      "listen 127.0.0.1:8001\n")


def test_ports_parse_every_address_form() -> None:
    assert checks.ports(listening=[22]).parse(SS)["ports"] == [22, 53, 80, 8001]


def test_ports_listening_and_free_failures_are_separate_messages() -> None:
    check = checks.ports(listening=[22, 80, 443, 5432], free=[8001, 8002])
    assert judge(check, SS).problems == [
        "nothing listens on TCP port(s) 443, 5432 (must be listening)",
        "TCP port(s) 8001 already in use (must be free)",
    ]
    assert checks.ports(listening=[80], free=[8002]).name == "ports listening 80; free 8002"


def test_ports_without_ss_fail_with_the_reason() -> None:
    assert judge(checks.ports(free=[1]), "noss\n").problems == [
        "ports: ss (iproute2) is not installed on the host"]


def test_ports_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="give listening"):
        checks.ports()
    with pytest.raises(ValueError, match="not a TCP port"):
        checks.ports(free=[70000])
    with pytest.raises(ValueError, match="both listening and free"):
        checks.ports(listening=[80], free=[80])


# -- secrets in .env --------------------------------------------------------------------------

ENV = """\
# comment line
export SECRET_KEY="k3y-with spaces & $dollar"
DB_PASSWORD = 'Changeme'
API_TOKEN=abc123   # trailing comment
REPEATED=zzzzzzzzzzzzzzzz
EMPTY=
CRLF_KEY=0123456789abcdef\r
DUP=first-value-is-long-enough
DUP=short
"""
VALUES = ["k3y-with spaces & $dollar", "Changeme", "abc123", "zzzzzzzzzzzzzzzz",
          "0123456789abcdef", "first-value-is-long-enough"]


def test_env_secrets_are_judged_on_the_host_and_values_never_printed(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV)
    keys = ["SECRET_KEY", "DB_PASSWORD", "API_TOKEN", "REPEATED", "EMPTY", "CRLF_KEY", "DUP",
            "MISSING"]
    check = checks.env_secrets(str(env), keys, min_length=12)
    out = sh(check.probe_script())
    for value in VALUES:
        assert value not in out and value.lower() not in out
    facts = check.parse(out)
    assert facts["keys"] == {"SECRET_KEY": "ok", "DB_PASSWORD": "default", "API_TOKEN": "short",
                             "REPEATED": "repeated", "EMPTY": "empty", "CRLF_KEY": "ok",
                             "DUP": "short", "MISSING": "missing"}
    verdict = check.evaluate(None, facts)
    assert verdict.problems == [
        f"secrets in {env}: DB_PASSWORD is a known default value; API_TOKEN is shorter than 12 "
        "characters; REPEATED is one character repeated; EMPTY is empty; DUP is shorter than 12 "
        "characters; MISSING is missing"]


def test_env_secrets_pass_and_missing_file(tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("A=0123456789abcdef\nB='another-strong-one'\n")
    check = checks.env_secrets(str(env), ["A", "B"])
    verdict = judge(check, sh(check.probe_script()))
    assert (verdict.problems, verdict.info) == ([], f"2 secret(s) present and not weak in {env}")
    gone = checks.env_secrets(str(tmp_path / "nope.env"), ["A"])
    assert judge(gone, sh(gone.probe_script())).problems == [
        f"secrets: {tmp_path}/nope.env does not exist"]


def test_env_secrets_weak_list_is_configurable_and_validated(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("TOKEN=corporate-default-1\n")
    check = checks.env_secrets(str(env), ["TOKEN"], weak=["Corporate-Default-1"])
    assert judge(check, sh(check.probe_script())).problems == [
        f"secrets in {env}: TOKEN is a known default value"]
    with pytest.raises(ValueError, match="invalid variable name"):
        checks.env_secrets(str(env), ["BAD-KEY"])
    with pytest.raises(ValueError, match="absolute"):
        checks.env_secrets(".env", ["A"])


# -- backup -----------------------------------------------------------------------------------


def make_dump(directory: Path, name: str, content: bytes = b"PGDMP data",
              age_hours: float = 0.0, sidecar: str | None = "file") -> Path:
    dump = directory / name
    dump.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    if sidecar == "file":
        (directory / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    elif sidecar == "stem":
        (directory / f"{dump.stem}.sha256").write_text(digest)
    when = time.time() - age_hours * 3600
    os.utime(dump, (when, when))
    return dump


def backup_verdict(directory: Path, **options: Any) -> checks.Verdict:
    check = checks.backup(str(directory), **options)
    return judge(check, sh(check.probe_script()))


def test_backup_newest_dump_verified_against_its_sidecar(tmp_path: Path) -> None:
    make_dump(tmp_path, "shop-old.dump", b"old", age_hours=50)
    make_dump(tmp_path, "shop-new.dump", b"new", age_hours=1)
    verdict = backup_verdict(tmp_path, max_age_hours=24)
    assert verdict.problems == []
    assert verdict.info == "backup shop-new.dump is 60 min old, checksum verified"
    assert verdict.data["verified"] is True and verdict.data["file"] == f"{tmp_path}/shop-new.dump"


def test_backup_sidecar_may_be_named_after_the_stem(tmp_path: Path) -> None:
    make_dump(tmp_path, "db.dump", sidecar="stem")
    assert backup_verdict(tmp_path).problems == []


def test_backup_missing_stale_corrupt_and_unverifiable_each_say_why(tmp_path: Path) -> None:
    assert backup_verdict(tmp_path).problems == [f"backup: no backup matching *.dump in {tmp_path}"]
    assert backup_verdict(tmp_path / "x").problems == [f"backup: {tmp_path}/x does not exist"]

    make_dump(tmp_path, "stale.dump", age_hours=30)
    assert backup_verdict(tmp_path, max_age_hours=24).problems == [
        f"backup: newest backup stale.dump in {tmp_path} is 30.0 h old (max 24 h)"]

    dump = make_dump(tmp_path, "corrupt.dump", b"good bytes")
    dump.write_bytes(b"bad bytes!")
    assert backup_verdict(tmp_path).problems == [
        f"backup: {tmp_path}/corrupt.dump is corrupt: its SHA-256 does not match "
        "corrupt.dump.sha256"]

    make_dump(tmp_path, "naked.dump", sidecar=None)
    assert backup_verdict(tmp_path).problems == [
        f"backup: {tmp_path}/naked.dump has no checksum sidecar (naked.dump.sha256)"]

    make_dump(tmp_path, "empty.dump", b"")
    assert backup_verdict(tmp_path).problems == [f"backup: {tmp_path}/empty.dump is empty"]

    make_dump(tmp_path, "junk.dump", sidecar=None)
    (tmp_path / "junk.dump.sha256").write_text("not a checksum\n")
    assert backup_verdict(tmp_path).problems == [
        f"backup: checksum sidecar {tmp_path}/junk.dump.sha256 holds no SHA-256"]


def test_backup_pattern_and_odd_file_names(tmp_path: Path) -> None:
    make_dump(tmp_path, "it's a dump; rm -rf x.dump")
    make_dump(tmp_path, "other.sql", age_hours=100)
    assert backup_verdict(tmp_path).problems == []
    assert backup_verdict(tmp_path, pattern="*.sql").problems[0].endswith("(max 24 h)")
    with pytest.raises(ValueError, match="file name pattern"):
        checks.backup(str(tmp_path), pattern="sub/*.dump")


# -- command ----------------------------------------------------------------------------------


def test_command_check_reports_exit_code_and_last_output_line() -> None:
    failing = checks.command("echo first; echo 'no server on 5432' >&2; exit 2")
    assert judge(failing, sh(failing.probe_script())).problems == [
        "`echo first; echo 'no server on 5432' >&2; exit 2` exited with code 2: "
        "no server on 5432"]
    passing = checks.command(["test", "-d", "/"])
    assert judge(passing, sh(passing.probe_script())).info == "`test -d /` succeeded"


# -- CI status: a real HTTP server --------------------------------------------------------------


def combined(state: str, *statuses: tuple[str, str, str]) -> dict[str, Any]:
    return {"state": state, "sha": SHA, "statuses": [
        {"context": c, "state": s, "description": d} for c, s, d in statuses]}


def ci_result(receiver: Receiver, **options: Any) -> tuple[Any, Any]:
    check = checks.ci_status(receiver.url("/repos/o/shop/commits/{sha}/status"),
                             token=Secret(TOKEN), sha=SHA, **options)
    return check, check.run_on_controller()


def test_ci_success_sends_the_token_in_the_authorization_header_only(
        caplog: pytest.LogCaptureFixture) -> None:
    reply = combined("success", ("ci/build", "success", "ok"), ("ci/tests", "success", ""))
    with caplog.at_level(logging.DEBUG), Receiver(reply=reply) as r:
        check, result = ci_result(r)
    (req,) = r.requests
    assert (req.method, req.path) == ("GET", f"/repos/o/shop/commits/{SHA}/status")
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert result.status is Status.OK and result.host == "(controller)" and result.task == "ci"
    assert result.message == f"CI success for commit {SHA[:12]} (2 checks)"
    assert TOKEN not in caplog.text + repr(result.to_dict()) + repr(check)


def test_ci_pending_and_failure_name_the_checks() -> None:
    pending = combined("pending", ("ci/build", "success", ""), ("ci/tests", "pending", "running"))
    with Receiver(reply=pending) as r:
        assert ci_result(r)[1].message == (f"CI is still running for commit {SHA[:12]}: 1 of 2 "
                                           "checks pending (ci/tests)")
    failure = combined("failure", ("ci/build", "success", ""),
                       ("ci/tests", "failure", "3 tests failed"), ("lint", "error", ""))
    with Receiver(reply=failure) as r:
        result = ci_result(r)[1]
    assert result.status is Status.FAILED
    assert result.message == (f"CI status of commit {SHA[:12]} is failure: ci/tests failure "
                              "(3 tests failed), lint error")


def test_ci_http_errors_and_garbage_fail_with_a_hint() -> None:
    with Receiver(status=401, reply={"message": f"Bad credentials {TOKEN}"}) as r:
        result = ci_result(r)[1]
    assert result.message == (f"CI status API {r.url('/repos/o/shop/commits/')}{SHA}/status: "
                              'HTTP 401: {"message": "Bad credentials ********"} '
                              "(is the token right?)")
    with Receiver(reply=["not", "a", "status"]) as r:
        assert ci_result(r)[1].message.endswith(
            'the answer is not a combined status ({"state": ...})')
    port = closed_port()
    check = checks.ci_status(f"http://127.0.0.1:{port}/status", timeout=2)
    assert check.run_on_controller().message == (
        f"CI status API http://127.0.0.1:{port}/status: cannot reach "
        f"http://127.0.0.1:{port}/status: connection refused by 127.0.0.1:{port}")


def test_ci_sha_defaults_to_the_repository_head(tmp_path: Path) -> None:
    head = git_repo(tmp_path)
    with Receiver(reply=combined("success")) as r:
        check = checks.ci_status(r.url("/c/{sha}/status"), repo_dir=str(tmp_path))
        assert check.run_on_controller().status is Status.OK
    assert r.requests[0].path == f"/c/{head}/status"
    assert "Authorization" not in r.requests[0].headers


# -- git clean --------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def git_repo(path: Path) -> str:
    git(path, "init", "-q")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init")
    return git(path, "rev-parse", "HEAD")


def test_git_clean_passes_then_lists_changes(tmp_path: Path) -> None:
    git_repo(tmp_path)
    check = checks.git_clean(str(tmp_path))
    assert check.run_on_controller().message == f"git tree {tmp_path} is clean"
    (tmp_path / "a.txt").write_text("changed\n")
    (tmp_path / "new.txt").write_text("new\n")
    result = check.run_on_controller()
    assert result.status is Status.FAILED
    assert result.message == (f"git tree {tmp_path} is not clean: 2 uncommitted change(s): "
                              "M a.txt, ?? new.txt")


def test_git_clean_outside_a_repository_fails(tmp_path: Path) -> None:
    message = checks.git_clean(str(tmp_path)).run_on_controller().message
    assert message.startswith(f"git status in {tmp_path} failed: fatal: not a git repository")


# -- reachable ---------------------------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_reachable_connects_from_the_controller(listening: int) -> None:
    ok = checks.reachable(listening, address="127.0.0.1").run_on_controller()
    assert ok.status is Status.OK and ok.message.startswith(f"127.0.0.1:{listening} reachable")
    port = closed_port()
    target = Host(name="db-1", address="127.0.0.1")
    check = checks.reachable(port)
    assert check.per_host and not checks.reachable(port, address="127.0.0.1").per_host
    failed = check.run_on_controller(target)
    assert (failed.host, failed.status) == ("db-1", Status.FAILED)
    assert failed.message == (f"127.0.0.1:{port} is not reachable from the controller: "
                              "Connection refused")


# -- the check contract and run_preflight ---------------------------------------------------


def test_a_check_plans_empty_or_raises_and_never_applies() -> None:
    class Conn:
        name = "web-1"
        host = Host(name="web-1", address="192.0.2.1")

    check = checks.ports(listening=[22])
    assert not check.plan(Conn(), check.parse("listen 0.0.0.0:22\n"))  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="nothing listens on TCP port"):
        check.plan(Conn(), check.parse(""))  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="never changes"):
        check.apply(Conn(), {}, check.plan(Conn(), check.parse("listen *:22")),  # type: ignore
                    None)  # type: ignore[arg-type]
    with pytest.raises(TaskError):
        checks.git_clean().parse(":")  # the runner then lets it gather on the controller


def test_run_preflight_records_skips_and_refuses_unknown_names(tmp_path: Path,
                                                               listening: int) -> None:
    git_repo(tmp_path)
    all_checks = [checks.git_clean(str(tmp_path)),
                  checks.reachable(listening, address="127.0.0.1", name="api"),
                  checks.reachable(closed_port(), address="127.0.0.1", name="queue")]
    report = checks.run_preflight([], all_checks, skip=["queue"])
    assert [(r.task, r.host, r.status.value) for r in report.results] == [
        ("git-clean " + str(tmp_path), "(controller)", "ok"), ("api", "(controller)", "ok"),
        ("queue", "(controller)", "skipped")]
    assert report.ok and report.skipped[0].message == "skipped on request (skip list)"
    assert report.summary() == "pre-flight: 2 ok, 0 failed, 1 skipped"
    report.raise_for_failures()  # nothing failed: no error

    with pytest.raises(ConfigError, match=r"cannot skip unknown check.*'bakup'"):
        checks.run_preflight([], all_checks, skip=["bakup"])
    with pytest.raises(ConfigError, match="two checks share the name"):
        checks.run_preflight([], [checks.git_clean(), checks.git_clean()])


def test_run_preflight_failure_lists_every_failed_check(tmp_path: Path) -> None:
    report = checks.run_preflight([], [checks.git_clean(str(tmp_path)),
                                       checks.reachable(closed_port(), address="127.0.0.1")])
    assert not report.ok and len(report.failed) == 2
    with pytest.raises(checks.PreflightError) as info:
        report.raise_for_failures()
    assert str(info.value).startswith("2 pre-flight check(s) failed: [(controller)] git-clean ")
    assert "[(controller)] reachable 127.0.0.1:" in str(info.value)
    assert report.render().splitlines()[0].startswith("failed   (controller)  git-clean ")
