"""Phased startup planning: layers, errors before anything runs, dry run."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError, InventoryError
from deploykit.inventory import Inventory
from deploykit.strategies import phased
from deploykit.strategies.phased import (
    CommandCheck,
    HttpCheck,
    RedisCheck,
    Service,
    SqlCheck,
    TcpCheck,
    plan_phases,
)
from deploykit.tasks import system

INVENTORY = Inventory.from_dict({"all": {"children": {
    "web": {"hosts": {"web-1": {"address": "192.0.2.1"}}},
    "db": {"hosts": {"db-1": {"address": "192.0.2.2"}}}}}})


def svc(name: str, *deps: str, hosts: str = "web-1") -> Service:
    return Service(name, hosts, system.command(["true"]), TcpCheck(80), depends_on=deps)


def names(phases: list[list[Service]]) -> list[list[str]]:
    return [[s.name for s in layer] for layer in phases]


def test_diamond_graph_layers_in_declaration_order() -> None:
    stack = [svc("app", "pg", "redis"), svc("nginx", "app"), svc("redis", "pg"), svc("pg"),
             svc("worker", "pg")]
    assert names(plan_phases(stack)) == [["pg"], ["redis", "worker"], ["app"], ["nginx"]]


def test_independent_services_share_the_first_phase() -> None:
    assert names(plan_phases([svc("b"), svc("a"), svc("c", "a")])) == [["b", "a"], ["c"]]


def test_cycle_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^dependency cycle: a -> b -> a$"):
        plan_phases([svc("a", "b"), svc("b", "a")])


def test_longer_cycle_behind_a_root_is_named() -> None:
    stack = [svc("root"), svc("x", "root", "y"), svc("y", "z"), svc("z", "x")]
    with pytest.raises(ConfigError, match=r"^dependency cycle: x -> y -> z -> x$"):
        plan_phases(stack)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(ConfigError, match=r"^dependency cycle: a -> a$"):
        plan_phases([svc("a", "a")])


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        plan_phases([svc("app", "postgres"), svc("pg")])
    assert err.value.message == ("service 'app' depends on unknown service 'postgres'; "
                                 "services: app, pg")


def test_duplicate_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="service 'a' is declared twice"):
        plan_phases([svc("a"), svc("a")])


def test_start_refuses_a_cycle_before_connecting() -> None:
    # the hosts are TEST-NET addresses nobody answers: reaching them would fail differently
    with pytest.raises(ConfigError, match="dependency cycle"):
        phased.start([svc("a", "b"), svc("b", "a")], INVENTORY)


def test_start_refuses_an_unknown_host_before_connecting() -> None:
    with pytest.raises(InventoryError, match="nope"):
        phased.start([svc("a"), svc("b", "a", hosts="nope")], INVENTORY)


def test_dry_run_prints_and_returns_the_phases(capsys: pytest.CaptureFixture[str]) -> None:
    stack = [Service("postgres", "db", system.command(["true"]), SqlCheck("postgres")),
             Service("redis", "db", system.command(["true"]), RedisCheck()),
             Service("app", "web", system.command(["true"]),
                     HttpCheck("http://{address}:8091/"), depends_on=("postgres", "redis")),
             Service("nginx", ["web-1"], system.command(["true"]), TcpCheck(80),
                     depends_on=("app",)),
             Service("probe", "web", system.command(["true"]), CommandCheck("true"),
                     depends_on=("postgres",))]
    outcome = phased.start(stack, INVENTORY, dry_run=True)
    assert outcome.result == "dry-run" and outcome.ok
    assert outcome.phases == [["postgres", "redis"], ["app", "probe"], ["nginx"]]
    assert outcome.started == 0 and outcome.report.hosts == {}
    assert capsys.readouterr().out == ("phase 1: postgres, redis\nphase 2: app, probe\n"
                                       "phase 3: nginx\n")


def test_bad_tcp_check_is_refused() -> None:
    with pytest.raises(ConfigError, match="bad TCP check"):
        phased.check_step("x", TcpCheck(80, address="1.2.3.4; rm -rf /"))
    with pytest.raises(ConfigError, match="bad TCP check"):
        phased.check_step("x", TcpCheck(0))


def test_check_steps_carry_retries() -> None:
    step = phased.check_step("redis", RedisCheck(retries=4, interval=0.5))
    assert (step.retries, step.delay, step.label) == (4, 0.5, "check redis")
    http_step = phased.check_step("app", HttpCheck("http://{address}/", retries=3))
    assert http_step.retries == 0  # the HTTP task polls by itself
