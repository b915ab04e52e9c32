"""What prune removes, without hosts: the release rule and the exec summary."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.ops import exec as fleet_exec
from deploykit.ops.prune import PruneSettings, order_releases
from deploykit.tasks.releases import AppReleases, ReleaseInfo

ROOT = "/srv"


def state(*specs: tuple[str, bool], links: dict[str, str] | None = None) -> AppReleases:
    rels = {name: ReleaseInfo(name, f"{ROOT}/shop/releases/{name}", True, failed, float(i),
                              sha256="x" * 64, version=name)
            for i, (name, failed) in enumerate(specs)}
    return AppReleases("shop", ROOT, rels, {k: f"releases/{v}" for k, v in (links or {}).items()})


def test_failed_first_never_current_nor_rollback_target() -> None:
    s = state(("r1", False), ("r2", True), ("r3", False), ("r4", False), ("r5", True),
              ("r6", False), links={"current": "r6"})
    doomed = [r.release_id for r in order_releases(s, keep=1)]
    # kept: r6 (current, and the newest good one), r4 (rollback target)
    assert doomed == ["r2", "r5", "r1", "r3"]
    assert [r.release_id for r in order_releases(s, keep=3)] == ["r2", "r5", "r1"]


def test_colour_links_are_kept() -> None:
    s = state(("r1", False), ("r2", False), ("r3", False), links={"current": "r3",
                                                                  "blue": "r1"})
    assert order_releases(s, keep=1) == []  # r1 blue, r2 rollback target, r3 current


def test_keep_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="--keep must be an integer of at least 1"):
        PruneSettings("shop", keep=0)


def test_exec_failures_name_failed_and_unreachable_hosts() -> None:
    ok = fleet_exec.ExecResult("web-1", "ok", 0, "", "", 0.1)
    bad = fleet_exec.ExecResult("web-2", "failed", 3, "", "", 0.1, "exit code 3")
    gone = fleet_exec.ExecResult("web-3", "unreachable", None, "", "", 0.1, "refused")
    assert fleet_exec.failures([ok]) is None
    assert fleet_exec.failures([ok, bad, gone]) == \
        "failed on web-2 (exit code 3); unreachable: web-3"
    [line] = fleet_exec.describe_check([Host("web-1", "10.0.0.5", user="deploy")], "uptime",
                                       sudo=True)
    assert line == "would run on web-1 (deploy@10.0.0.5:22, through sudo -n): uptime"
    with pytest.raises(ConfigError, match="command is empty"):
        fleet_exec.run_everywhere([], " ")
