"""The runner's scheduling and configuration, where a real host adds nothing:
serial batches, ``when`` conditions, and the errors of a wrong setup. What runs
over SSH (order of batches on hosts, handlers, undo) stays in tests/lab/test_runner.py."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.runner import Runner, batches, evaluate, step
from deploykit.tasks import files


def _hosts(count: int) -> list[Host]:
    return [Host(name=f"h{i}", address=f"192.0.2.{i}", vars={"roles": ["web"] if i % 2 else
                                                              ["db"]}, groups=("all",))
            for i in range(1, count + 1)]


def _names(split: list[list[Host]]) -> list[list[str]]:
    return [[h.name for h in batch] for batch in split]


@pytest.mark.parametrize(("count", "serial", "expected"), [
    (3, None, [[1, 2, 3]]),
    (3, 1, [[1], [2], [3]]),
    (5, 2, [[1, 2], [3, 4], [5]]),
    (3, "34%", [[1, 2], [3]]),          # 34 % of 3 hosts rounds up to batches of 2
    (10, "10%", [[i] for i in range(1, 11)]),
    (200, "10%", [list(range(i, i + 20)) for i in range(1, 201, 20)]),
    (3, "1%", [[1], [2], [3]]),          # never an empty batch
    (4, "100%", [[1, 2, 3, 4]]),
    (2, 10, [[1, 2]]),
])
def test_serial_batches(count: int, serial: int | str | None,
                        expected: list[list[int]]) -> None:
    assert _names(batches(_hosts(count), serial)) == [[f"h{i}" for i in b] for b in expected]


def test_no_hosts_is_no_batch() -> None:
    assert batches([], None) == [] and batches([], 2) == []


@pytest.mark.parametrize("serial", [0, -1, "ten", "10", "%", "1.2.3%"])
def test_a_wrong_serial_is_a_config_error(serial: int | str) -> None:
    with pytest.raises(ConfigError, match="serial must be"):
        batches(_hosts(3), serial)


def test_when_conditions_see_host_vars_name_and_groups() -> None:
    web, db = _hosts(2)
    assert evaluate("'web' in roles", web) and not evaluate("'web' in roles", db)
    assert evaluate("inventory_hostname == 'h2'", db)
    assert evaluate("'all' in group_names", web)
    assert evaluate(lambda ctx: ctx["inventory_hostname"] == "h1", web)


def test_a_broken_condition_is_a_config_error_naming_the_host() -> None:
    with pytest.raises(ConfigError, match="condition") as err:
        evaluate("roles ==", _hosts(1)[0])
    assert err.value.host == "h1"


def test_unknown_handler_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown handler 'relaod'"):
        Runner([step(files.directory("/srv/x"), notify=["relaod"])], handlers={"reload": []})


@pytest.mark.parametrize(("options", "message"), [
    ({"forks": 0}, "forks must be at least 1, not 0"),
    ({"undo": "everything"}, "undo must be 'host', 'fleet' or 'none', not 'everything'"),
])
def test_wrong_runner_options_are_config_errors(options: dict[str, object],
                                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Runner([files.directory("/srv/x")], **options)  # type: ignore[arg-type]
