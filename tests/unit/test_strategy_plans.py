"""The strategies' steps and the release ledger's decisions, without hosts.

Where the suite gates sit in a blue/green deploy over a runtime (after the health gate,
after verification), rolling's per-host gate, each release's own environment file, and
the ledger: rollback targets by serving order (never by install time), only verified
releases as ``--to``, a failed release never a target.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploykit.artifacts import Artifact
from deploykit.errors import ConfigError
from deploykit.runtimes import ledger
from deploykit.runtimes.compose import ComposeRelease, ComposeRuntime, ComposeSpec
from deploykit.runtimes.ledger import Entry
from deploykit.runtimes.release import ReleaseRuntime, ReleaseSpec
from deploykit.secrets import Secret, redact
from deploykit.strategies import rolling
from deploykit.strategies.base import ReleaseState, StrategyContext
from deploykit.strategies.bluegreen import BlueGreenStrategy
from deploykit.strategies.phases import PhaseRunner
from deploykit.strategies.rolling import Rolling
from deploykit.tasks.releases import SwitchTask
from deploykit.tasks.services import ProgramTask
from deploykit.verify import DeployContext, SuiteTask

V, P, L, F, R = (ReleaseState.VERIFIED, ReleaseState.PREPARED, ReleaseState.LIVE,
                 ReleaseState.FAILED, ReleaseState.ROLLED_BACK)


def artifact(version: str = "v2") -> Artifact:
    return Artifact("shop", version, Path(f"/nonexistent/shop-{version}.tar.gz"), "0" * 64, 1)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite"
    path.mkdir()
    (path / "test_state.py").write_text("def test_nothing():\n    pass\n")
    return path


def context(spec: ReleaseSpec) -> StrategyContext:
    return StrategyContext({}, "t", [], ReleaseRuntime(spec))


# -- gates --------------------------------------------------------------------------------------


def test_bluegreen_gates_come_after_the_health_gate_and_after_verification(suite: Path) -> None:
    ctx = context(ReleaseSpec("shop", artifact(), "X=1\n", verify_suite=str(suite)))
    strategy = BlueGreenStrategy()
    runner = strategy.runner_for(ctx)
    gate = ctx.runtime.gate_steps("green")
    pre = runner.suite_step("pre_switch", "green", 8002)
    assert [getattr(s, "name", "") for s in gate] == ["health gate: green /health"]
    assert isinstance(pre, SuiteTask) and pre.marker == "pre_switch"
    assert pre.context == DeployContext(app="shop", version="v2", release="v2", color="green",
                                        port=8002, program="shop-green", phase="pre_switch")
    verify = strategy.verify_steps(ctx, "green")
    current, post = verify[-2:]
    assert isinstance(current, SwitchTask) and current.name == "releases.switch shop current -> v2"
    assert isinstance(post, SuiteTask) and post.marker == "post_switch"
    assert post.context.phase == "post_switch" and post.context.color == "green"
    assert post.name.startswith("verify:")  # a failure marks the release failed


def test_without_a_suite_no_gate_step_and_current_moves_at_finish() -> None:
    ctx = context(ReleaseSpec("shop", artifact(), "X=1\n"))
    strategy = BlueGreenStrategy()
    assert PhaseRunner(ctx).suite_step("pre_switch", "blue", 8001) is None
    assert not any(isinstance(s, SuiteTask | SwitchTask)
                   for s in strategy.verify_steps(ctx, "blue"))
    assert any(isinstance(s, SwitchTask) and s.name == "releases.switch shop current -> v2"
               for s in ctx.runtime.finish_steps("blue"))


def test_rolling_gates_each_host_before_it_serves(suite: Path) -> None:
    plan = Rolling("shop", artifact(), "X=1\n", port=8000, verify_suite=str(suite))
    ctx = StrategyContext({}, "t", [], ReleaseRuntime(plan.as_bluegreen()))
    run = rolling._Rolling(plan, ctx, None)
    last = run.host_steps()[-1]
    assert isinstance(last, SuiteTask) and last.context == DeployContext(
        app="shop", version="v2", release="v2", color=None, port=8000, program="shop",
        phase="pre_switch")
    assert not any(isinstance(s, SuiteTask) for s in run.host_steps(gate=False))


# -- each release its own environment file ------------------------------------------------------


def test_a_report_redacts_the_env_secrets_not_the_host_addresses_beside_them() -> None:
    """The pipeline names the secrets inside the .env: the address in REDIS_URL stays
    readable in messages (it was masked as a piece of the whole .env text)."""
    text = Secret("REDIS_URL=redis://198.18.13.13:6379/0\nSECRET_KEY=k3y-0f-the-app-s3cret\n")
    whole = ReleaseRuntime(ReleaseSpec("shop", artifact(), text))
    named = ReleaseRuntime(ReleaseSpec("shop", artifact(), text,
                                       env_secrets=[Secret("k3y-0f-the-app-s3cret")]))
    line = "GET http://198.18.13.13/version failed; key k3y-0f-the-app-s3cret"
    assert "198.18.13.13" not in redact(line, whole.secrets)  # the old, over-wide mask
    shown = redact(line, named.secrets)
    assert "http://198.18.13.13/version" in shown and "k3y-0f-the-app-s3cret" not in shown


def test_each_release_and_content_gets_its_own_env_file_read_by_its_program() -> None:
    one = ReleaseSpec("shop", artifact("v1"), Secret("X=1\n"))
    two = ReleaseSpec("shop", artifact("v2"), Secret("X=1\n"))
    changed = ReleaseSpec("shop", artifact("v2"), Secret("X=2\n"))
    paths = {one.env_path, two.env_path, changed.env_path}
    assert len(paths) == 3 and all(p.startswith("/srv/shop/env/") for p in paths)
    (program,) = ReleaseRuntime(two).start_steps("green")
    assert isinstance(program, ProgramTask)
    assert program.spec.environment["APP_ENV_FILE"] == two.env_path
    rollback = two.for_rollback(artifact("v1"), one.env_path)
    assert rollback.env is None and rollback.env_path == one.env_path
    assert ReleaseRuntime(rollback).env_steps() == []  # a rollback writes no env file
    with pytest.raises(ConfigError, match="env_file must be under /srv/shop/env/"):
        ReleaseSpec("shop", artifact(), None, env_file="/etc/passwd")


# -- the ledger ---------------------------------------------------------------------------------


def entries(*changes: tuple[str, ReleaseState] | tuple[str, ReleaseState, bool]) -> list[Entry]:
    return [Entry(c[0], c[1], f"d{i}", rollback=bool(c[2]) if len(c) > 2 else False)
            for i, c in enumerate(changes)]


def test_the_rollback_target_is_what_served_before_not_the_newest_install() -> None:
    # v1, v2, v3 served in turn; then v1 was deployed again (re-installed: the newest)
    log = entries(("v1", V), ("v2", V), ("v3", V), ("v1", P), ("v1", L), ("v1", V))
    assert ledger.serving_stack(log) == ["v1", "v2", "v3", "v1"]
    assert ledger.rollback_target(log) == "v3"  # back to what served before, not "older"


def test_rolling_back_twice_steps_further_back() -> None:
    log = entries(("v1", V), ("v2", V), ("v3", V), ("v2", V, True), ("v3", R))
    assert ledger.serving_stack(log) == ["v1", "v2"]
    assert ledger.rollback_target(log) == "v1"


def test_a_failed_release_is_never_a_target_nor_accepted_as_to() -> None:
    log = entries(("v1", V), ("v2", P), ("v2", L), ("v2", F), ("v3", V))
    assert ledger.rollback_target(log) == "v1"
    assert not ledger.accepts_target(log, "v2")
    assert ledger.accepts_target(log, "v1")
    # verified once, failed later: no longer a target
    log += entries(("v1", F))
    assert ledger.rollback_target(log) is None
    with pytest.raises(ConfigError, match="never passed verification"):
        ledger.fleet_target({"web-1": log}, {"web-1": "v3"}, "v1")


def test_fleet_target_refuses_hosts_that_disagree() -> None:
    a = entries(("v1", V), ("v2", V))
    b = entries(("v0", V), ("v2", V))
    assert ledger.fleet_target({"web-1": a, "web-2": a}, {"web-1": "v2", "web-2": "v2"}) == "v1"
    with pytest.raises(ConfigError, match="targets differ"):
        ledger.fleet_target({"web-1": a, "web-2": b}, {"web-1": "v2", "web-2": "v2"})


def test_ledger_lines_round_trip_and_torn_lines_are_skipped() -> None:
    line = Entry("v2", V, "d1", "green", 12.5, False, "/srv/shop/env/v2-abc.env").to_line()
    assert ledger.parse(line + "\n{\"release\": \"v3\", \"sta\n") == [
        Entry("v2", V, "d1", "green", 12.5, False, "/srv/shop/env/v2-abc.env")]


# -- phased compose startup ---------------------------------------------------------------------

STACK = """\
services:
  api:
    image: shop:2
    depends_on: [db, cache]
  db:
    image: postgres:15
  cache:
    image: redis:7
"""


def test_a_phased_compose_colour_starts_its_services_in_dependency_order() -> None:
    spec = ComposeSpec("shop", ComposeRelease("2", {"docker-compose.yml": STACK}),
                       {"TOKEN": Secret("t")}, phased=True)
    names = [getattr(s, "label", None) or s.name for s in ComposeRuntime(spec).start_steps("blue")]
    assert names[:6] == ["start db", "health db", "start cache", "health cache", "start api",
                         "health api"], names
    assert names[6] == "compose up shop-blue"  # then the whole project, already running
    plain = ComposeRuntime(ComposeSpec("shop", spec.release, {}))
    assert plain.start_steps("blue")[0].name == \
        "compose up shop-blue"
