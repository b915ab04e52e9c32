"""Results, host reports and run reports: counts, JSON, redaction, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from deploykit.result import HostReport, Result, RunReport, Status, to_jsonable
from deploykit.secrets import REDACTED, Secret

PASSWORD = "s3cr3t-Pa55"


def make_report(**kwargs: Any) -> RunReport:
    report = RunReport("20240501-120000-ab12", started=1000.0, **kwargs)
    report.add(Result("web-1", "files.directory /srv/app", Status.OK, duration=0.01))
    report.add(
        Result(
            "web-1",
            "nginx.config",
            Status.CHANGED,
            diff="-worker_processes 1;\n+worker_processes 2;",
            duration=0.25,
            data={"path": "/etc/nginx/nginx.conf", "backup": "/var/backups/nginx.conf.1"},
        )
    )
    report.add(Result("web-2", "files.directory /srv/app", Status.SKIPPED, message="when: false"))
    report.add(Result("web-2", "nginx.config", Status.FAILED, message="nginx -t: syntax error"))
    report.host("web-2").undone.append("restore /etc/nginx/nginx.conf")
    report.host("web-2").undo_failed.append("switch /srv/app/current back: permission denied")
    report.mark_unreachable("db-1", "connect to 198.18.0.13:22: connection refused")
    report.finished = 1012.5
    return report


# -- Result ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ok", "failed", "changed", "skipped"),
    [
        (Status.OK, True, False, False, False),
        (Status.CHANGED, True, False, True, False),
        (Status.FAILED, False, True, False, False),
        (Status.SKIPPED, True, False, False, True),
    ],
)
def test_result_flags(status: Status, ok: bool, failed: bool, changed: bool, skipped: bool) -> None:
    result = Result("h", "t", status)
    assert (result.ok, result.failed, result.changed, result.skipped) == (
        ok,
        failed,
        changed,
        skipped,
    )


def test_status_is_a_string_and_result_coerces_plain_strings() -> None:
    assert isinstance(Status.CHANGED, str)
    assert str(Status.CHANGED) == "changed"
    assert f"{Status.FAILED}" == "failed"
    result = Result("h", "t", "changed")  # type: ignore[arg-type]
    assert result.status is Status.CHANGED
    with pytest.raises(ValueError):
        Result("h", "t", "chnaged")  # type: ignore[arg-type]


def test_result_to_dict() -> None:
    result = Result(
        "web-1",
        "files.file /etc/motd",
        Status.CHANGED,
        diff="mode: 0644 -> 0600",
        message="",
        duration=0.5,
        check=True,
        data={"mode": "0600", "paths": ("/etc/motd",)},
    )
    assert result.to_dict() == {
        "host": "web-1",
        "task": "files.file /etc/motd",
        "status": "changed",
        "diff": "mode: 0644 -> 0600",
        "message": "",
        "duration": 0.5,
        "check": True,
        "data": {"mode": "0600", "paths": ["/etc/motd"]},
    }


def test_result_data_defaults_are_not_shared() -> None:
    a, b = Result("h", "t", Status.OK), Result("h", "t", Status.OK)
    a.data["x"] = 1
    assert b.data == {}


# -- HostReport -----------------------------------------------------------------------------


def test_host_counts_are_exclusive_per_status() -> None:
    host = HostReport(
        "web-1",
        [
            Result("web-1", "a", Status.OK),
            Result("web-1", "b", Status.CHANGED),
            Result("web-1", "c", Status.CHANGED),
            Result("web-1", "d", Status.SKIPPED),
        ],
    )
    assert host.counts == {"ok": 1, "changed": 2, "failed": 0, "skipped": 1}
    assert not host.failed
    assert host.changed
    assert host.outcome == "changed"


def test_host_without_results_is_ok() -> None:
    host = HostReport("web-1")
    assert host.counts == {"ok": 0, "changed": 0, "failed": 0, "skipped": 0}
    assert (host.failed, host.outcome) == (False, "ok")


@pytest.mark.parametrize(
    "host",
    [
        HostReport("h", [Result("h", "a", Status.CHANGED), Result("h", "b", Status.FAILED)]),
        HostReport("h", unreachable=True),
        HostReport("h", [Result("h", "a", Status.OK)], error="lock held by deploy 42"),
    ],
    ids=["failed-step", "unreachable", "host-error"],
)
def test_host_failed(host: HostReport) -> None:
    assert host.failed
    assert host.outcome == "failed"


# -- RunReport ------------------------------------------------------------------------------


def test_run_report_groups_results_by_host_in_first_seen_order() -> None:
    report = make_report()
    assert list(report.hosts) == ["web-1", "web-2", "db-1"]
    assert [r.task for r in report.hosts["web-1"].results] == [
        "files.directory /srv/app",
        "nginx.config",
    ]
    assert report.host("web-1") is report.hosts["web-1"]
    assert report.hosts["db-1"].unreachable
    assert report.hosts["db-1"].error == "connect to 198.18.0.13:22: connection refused"


def test_run_report_counts_and_state() -> None:
    report = make_report()
    assert report.counts() == {"ok": 1, "changed": 1, "failed": 1, "skipped": 1}
    assert report.failed
    assert not report.ok
    assert report.duration == 12.5


def test_run_report_ok_when_no_host_failed() -> None:
    report = RunReport("r")
    assert report.ok and not report.failed
    report.add(Result("web-1", "a", Status.CHANGED))
    assert report.ok
    assert report.duration is None
    report.finish()
    assert report.finished is not None and report.finished >= report.started


def test_add_is_thread_safe() -> None:
    report = RunReport("r")

    def work(n: int) -> None:
        for i in range(200):
            report.add(Result(f"host-{i % 10}", f"step {n}", Status.OK))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(report.hosts) == 10
    assert all(len(h.results) == 160 for h in report.hosts.values())
    assert report.counts()["ok"] == 1600


# -- JSON -----------------------------------------------------------------------------------


def test_to_json_content() -> None:
    data = json.loads(make_report(check=True).to_json())
    assert data["run_id"] == "20240501-120000-ab12"
    assert (data["started"], data["finished"], data["duration"]) == (1000.0, 1012.5, 12.5)
    assert data["check"] is True
    assert data["ok"] is False
    assert data["counts"] == {"ok": 1, "changed": 1, "failed": 1, "skipped": 1}
    assert list(data["hosts"]) == ["web-1", "web-2", "db-1"]
    web2 = data["hosts"]["web-2"]
    assert web2["failed"] is True
    assert web2["counts"] == {"ok": 0, "changed": 0, "failed": 1, "skipped": 1}
    assert web2["undone"] == ["restore /etc/nginx/nginx.conf"]
    assert web2["undo_failed"] == ["switch /srv/app/current back: permission denied"]
    assert web2["results"][1] == {
        "host": "web-2",
        "task": "nginx.config",
        "status": "failed",
        "diff": "",
        "message": "nginx -t: syntax error",
        "duration": 0.0,
        "check": False,
        "data": {},
    }
    changed = data["hosts"]["web-1"]["results"][1]
    assert changed["diff"] == "-worker_processes 1;\n+worker_processes 2;"
    assert changed["data"]["backup"] == "/var/backups/nginx.conf.1"
    db1 = data["hosts"]["db-1"]
    assert (db1["unreachable"], db1["failed"], db1["results"]) == (True, True, [])


def test_to_json_indent() -> None:
    report = RunReport("r", started=1.0)
    assert report.to_json(indent=None) == (
        '{"run_id": "r", "started": 1.0, "finished": null, "duration": null, "check": false, '
        '"ok": true, "counts": {"ok": 0, "changed": 0, "failed": 0, "skipped": 0}, "hosts": {}}'
    )
    assert report.to_json().startswith('{\n  "run_id": "r",\n')


def test_json_round_trip_rebuilds_an_equal_report() -> None:
    report = make_report(check=True)
    again = RunReport.from_dict(json.loads(report.to_json()))
    assert again == report
    assert again.hosts["web-1"].results[1].status is Status.CHANGED
    assert again.to_json() == report.to_json()


# -- secrets --------------------------------------------------------------------------------


def test_to_json_redacts_secret_values_everywhere() -> None:
    secret = Secret(PASSWORD)
    report = RunReport("r", secrets=[secret])
    report.add(
        Result(
            "db-1",
            "postgres.user app",
            Status.FAILED,
            diff=f"-password {PASSWORD}\n+password ********",
            message=f"psql: FATAL: password authentication failed for 'app:{PASSWORD}'",
            data={
                "dsn": f"postgresql://app:{PASSWORD}@localhost/app",
                "attempts": [{"stderr": f"bad {PASSWORD}"}, 3, None],
                "password": secret,
                f"key-{PASSWORD}": True,
            },
        )
    )
    report.host("db-1").undo_failed.append(f"ALTER ROLE app PASSWORD '{PASSWORD}': timeout")

    text = report.to_json()

    assert PASSWORD not in text
    result = json.loads(text)["hosts"]["db-1"]["results"][0]
    assert result["message"] == (
        f"psql: FATAL: password authentication failed for 'app:{REDACTED}'"
    )
    assert result["diff"] == f"-password {REDACTED}\n+password ********"
    assert result["data"] == {
        "dsn": f"postgresql://app:{REDACTED}@localhost/app",
        "attempts": [{"stderr": f"bad {REDACTED}"}, 3, None],
        "password": REDACTED,
        f"key-{REDACTED}": True,
    }
    assert json.loads(text)["hosts"]["db-1"]["undo_failed"] == [
        f"ALTER ROLE app PASSWORD '{REDACTED}': timeout"
    ]
    # The in-memory result is untouched: redaction happens on the way out.
    assert PASSWORD in report.hosts["db-1"].results[0].message


def test_secret_object_in_data_is_redacted_without_registered_secrets() -> None:
    report = RunReport("r")
    report.add(Result("h", "t", Status.OK, data={"token": Secret("tok-123"), "n": [Secret("x")]}))
    text = report.to_json()
    assert "tok-123" not in text
    assert json.loads(text)["hosts"]["h"]["results"][0]["data"] == {
        "token": REDACTED,
        "n": [REDACTED],
    }


def test_secrets_are_not_serialised_or_compared() -> None:
    report = RunReport("r", started=1.0, secrets=[Secret(PASSWORD)])
    assert "secrets" not in report.to_dict()
    assert PASSWORD not in repr(report)
    assert report == RunReport("r", started=1.0)


def test_to_jsonable_turns_other_objects_into_strings() -> None:
    assert to_jsonable(
        {"path": Path("/srv/app"), "t": (1, 2.5), "nan": float("nan"), "b": b"x\xff", "s": {"a"}}
    ) == {"path": "/srv/app", "t": [1, 2.5], "nan": "nan", "b": "x\ufffd", "s": ["a"]}
    assert to_jsonable(Status.OK) == "ok"
    assert type(to_jsonable(Status.OK)) is str


# -- write_json -----------------------------------------------------------------------------


def test_write_json_is_private_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "r.json"
    old_umask = os.umask(0)
    try:
        written = make_report().write_json(target)
    finally:
        os.umask(old_umask)
    assert written == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["r.json"]
    assert json.loads(target.read_text())["run_id"] == "20240501-120000-ab12"


def test_write_json_replaces_an_existing_file_and_tightens_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    target.chmod(0o644)
    RunReport("new", started=1.0).write_json(str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["run_id"] == "new"
    assert target.read_text().endswith("}\n")


def test_write_json_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        RunReport("new").write_json(target)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.json"]


def test_read_json_loads_what_write_json_wrote(tmp_path: Path) -> None:
    report = make_report(secrets=[Secret("nginx.conf")])
    path = report.write_json(tmp_path / "r.json")
    loaded = RunReport.read_json(path)
    assert loaded.hosts["web-2"].undone == [f"restore /etc/nginx/{REDACTED}"]
    assert loaded.counts() == report.counts()
