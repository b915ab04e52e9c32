"""The backup retention rule without hosts: files and history in, keep/delete out."""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.tasks import retention
from deploykit.tasks.retention import BackupFile

DAY = 86400.0
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Rec:
    id: str
    result: str | None
    kind: str = "deploy"


def files(*names: str, verified: bool = True) -> list[BackupFile]:
    """``app-<name>.dump`` files, one hour apart, the last the newest."""
    return [BackupFile(f"app-{n}.dump", NOW - (len(names) - i) * 3600, 10, verified)
            for i, n in enumerate(names)]


def test_ten_failed_deploys_after_the_last_success_keep_its_backup() -> None:
    bad = [f"bad{i}" for i in range(10)]
    history = [Rec("good", "succeeded"), *(Rec(b, "failed") for b in bad)]
    rule = retention.plan(files("good", *bad), history, db="app", keep_last=2, keep_days=None,
                          now=NOW)
    assert "app-good.dump" not in rule.delete
    assert rule.keep["app-good.dump"] == [
        "pre-deploy backup of good, the newest successful deploy (rollback --db)"]
    assert rule.delete == [f"app-bad{i}.dump" for i in range(8)]


def test_manual_backups_do_not_push_deploy_backups_out() -> None:
    manual = [f"manual-{i}" for i in range(10)]
    rule = retention.plan(files("d1", "d2", "d3", *manual), [Rec("d2", "succeeded"),
                                                               Rec("d3", "failed")],
                          db="app", keep_last=2, keep_days=None, now=NOW)
    assert rule.delete == ["app-d1.dump"] + [f"app-manual-{i}.dump" for i in range(8)]
    assert set(rule.keep) == {"app-d2.dump", "app-d3.dump", "app-manual-8.dump",
                              "app-manual-9.dump"}


def test_newest_verified_backup_is_kept_even_when_newer_ones_are_not() -> None:
    found = [*files("d1", "d2"), BackupFile("app-d3.dump", NOW, 10, False)]
    rule = retention.plan(found, [], db="app", keep_last=1, keep_days=None, now=NOW)
    assert rule.keep == {"app-d3.dump": ["among the 1 newest deploy backups"],
                         "app-d2.dump": ["newest verified backup"]}
    assert rule.delete == ["app-d1.dump"]


def test_no_rule_deletes_nothing_and_other_files_are_ignored() -> None:
    found = [*files("d1", "d2"), BackupFile("other-d1.dump", 0.0)]
    rule = retention.plan(found, [], db="app", keep_last=None, keep_days=None, now=NOW)
    assert rule.delete == [] and "other-d1.dump" not in rule.keep
    aged = retention.plan(files("d1", "d2", "d3"), [], db="app", keep_last=None, keep_days=0.1,
                          now=NOW)
    assert aged.delete == ["app-d1.dump"]


def test_a_rollback_record_is_not_a_deploy() -> None:
    history = [Rec("d1", "succeeded"), Rec("r1", "succeeded", kind="rollback")]
    assert retention.rollback_deploy(history) == "d1"
    assert retention.rollback_deploy([Rec("d1", None)]) is None


def test_listing_and_history_lines_parse() -> None:
    lines = ["now 1", "entry 1600000000.5 10 1 app-d0.dump", "entry x 1 0 app-d1.dump",
             "entry 1 2 0 app with space.dump",
             'history {"event":"start","id":"d0","app":"shop"}',
             'history {"event":"end","id":"d0","app":"shop","result":"succeeded"}']
    assert retention.parse_listing(lines) == [
        BackupFile("app-d0.dump", 1600000000.5, 10, True),
        BackupFile("app with space.dump", 1.0, 2, False)]
    [record] = retention.parse_history_lines(lines)
    assert (record.id, record.result) == ("d0", "succeeded")


def test_old_databases_keep_the_newest_and_the_young() -> None:
    names = ["app_old_20200101000000", "app_old_20200102000000_2", "app_old_20260101T000000Z",
             "app_old_20260105000000", "app_undone_20200101000000", "app_old_nostamp",
             "app", "app_restore", "other_old_20200101000000"]
    now = retention.retired_at("app_old_20260105120000")
    assert now is not None
    rule = retention.old_databases(names, db="app", now=now, keep_days=7)
    assert rule.delete == ["app_old_20200101000000", "app_old_20200102000000_2"]
    assert rule.keep == {
        "app_old_nostamp": ["its name carries no time: kept"],
        "app_old_20260105000000": ["newest app_old_* database (the only copy of what was "
                                   "written after the backup it replaced)",
                                   "younger than 7 days"],
        "app_undone_20200101000000": ["newest app_undone_* database (the restored copy an "
                                      "undo set aside)"],
        "app_old_20260101T000000Z": ["younger than 7 days"]}
    only = retention.old_databases(["app_old_20200101000000"], db="app", now=now,
                                   keep_days=None)
    assert only.delete == [] and list(only.keep) == ["app_old_20200101000000"]
