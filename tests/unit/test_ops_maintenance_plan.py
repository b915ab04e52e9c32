"""Maintenance mode without hosts: what it renders, what it refuses, its plan."""

from __future__ import annotations

from typing import Any

import pytest

from deploykit.errors import ConfigError, TaskError
from deploykit.tasks import maintenance, nginx


def test_the_map_lets_allowed_addresses_and_health_paths_through() -> None:
    text = maintenance.render_map("shop-api", ["10.0.0.7", "192.168.1.9/24"], ["/health"])
    assert "geo $dk_maintenance_allow_shop_api {" in text
    assert "    10.0.0.7 1;" in text.splitlines()
    assert "    192.168.1.0/24 1;" in text.splitlines()
    assert '    "~^1:" 0;' in text.splitlines() and '    "0:/health" 0;' in text.splitlines()


def test_the_snippet_answers_503_with_retry_after() -> None:
    text = maintenance.render_snippet("shop", "/etc/nginx/deploykit/maintenance/shop", 120)
    assert "return 503;" in text and "add_header Retry-After 120 always;" in text
    assert "root /etc/nginx/deploykit/maintenance/shop;" in text


def test_bad_values_are_refused_when_the_task_is_built() -> None:
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.300' is not an IP address"):
        maintenance.maintenance("shop", allow=["10.0.0.300"])
    with pytest.raises(ConfigError, match="pass-through path"):
        maintenance.maintenance("shop", paths=["/health; return 200"])
    with pytest.raises(ConfigError, match="retry_after"):
        maintenance.maintenance("shop", retry_after=0)
    assert "&lt;b&gt;" in maintenance.render_page("shop", "<b>soon</b>")


def test_every_site_includes_the_maintenance_seam() -> None:
    text = nginx.site("shop", "_").text.decode()
    assert "    include /etc/nginx/deploykit/maintenance/shop/*.conf;" in text.splitlines()


def _entries(task: maintenance.MaintenanceTask, states: dict[str, Any]) -> dict[str, Any]:
    from deploykit.facts import PathFacts
    facts = {}
    for path, _ in task.managed():
        want = states.get(path)
        kind = "absent" if want is None else "file"
        facts[path] = (PathFacts(exists=want is not None, type=kind), want)
    return {"entries": facts}


class _Conn:
    name = "web-1"


def test_on_needs_a_site_with_the_include() -> None:
    task = maintenance.maintenance("shop")
    site = nginx.DEFAULT_SETTINGS.site_file("shop")
    with pytest.raises(TaskError, match="no site for app shop"):
        task.plan(_Conn(), _entries(task, {}))  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="written by an older deploykit"):
        task.plan(_Conn(), _entries(task, {site: b"server { }"}))  # type: ignore[arg-type]
    plan = task.plan(_Conn(), _entries(  # type: ignore[arg-type]
        task, {site: nginx.site("shop", "_").text}))
    assert [c.attribute.split()[0] for c in plan.changes] == ["maintenance", "maintenance",
                                                              "maintenance"]


def test_off_plans_nothing_when_already_off() -> None:
    task = maintenance.maintenance("shop", on=False)
    assert not task.plan(_Conn(), _entries(task, {}))  # type: ignore[arg-type]
