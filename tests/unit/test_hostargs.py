"""Per-host arguments resolved without a host connection (issue 20 item 5)."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.hostargs import literal, per_host, render_for_host
from deploykit.inventory import Host
from deploykit.runner import Prefetched
from deploykit.task import Task
from deploykit.tasks import files, system

WEB = Host("web-1", "192.0.2.1", vars={"app_root": "/srv/a", "port": 8001}, groups=("web",))


def test_templates_callables_and_literals_resolve_per_host() -> None:
    assert render_for_host("{{ app_root }}/x-{{ inventory_hostname }}", WEB) == "/srv/a/x-web-1"
    assert render_for_host(lambda h: h.vars["port"] + 1, WEB) == 8002
    assert render_for_host(literal("{{ kept }}"), WEB) == "{{ kept }}"
    assert render_for_host(["{{ port }}", {"k": "{{ group_names[0] }}"}], WEB) == [
        "8001", {"k": "web"}]
    assert render_for_host("no braces", WEB) == "no braces"


def test_an_undefined_var_names_the_host() -> None:
    with pytest.raises(ConfigError, match="'missing' is undefined") as caught:
        render_for_host("{{ missing }}", WEB)
    assert caught.value.host == "web-1"


def test_a_per_host_task_is_built_once_per_host_and_checked() -> None:
    task = per_host(files.directory, "{{ app_root }}", mode=0o750)
    built = task.for_host(WEB)
    assert isinstance(built, files.DirectoryTask) and built.path == "/srv/a"
    assert task.for_host(WEB) is built
    with pytest.raises(ConfigError, match="not a task"):
        per_host(lambda h: "oops").for_host(WEB)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="build it for a host first"):
        task.probe_script()


def test_facts_kept_after_a_change_are_only_those_of_untouched_plain_paths() -> None:
    tasks: list[Task] = [files.directory("/srv/a", recursive=True), files.file("/srv/a/f", "x"),
                         files.file("/srv/b", "y"), files.directory("/srv"),
                         system.command("true")]
    ahead = Prefetched({i: {} for i in range(1, 5)}, canonical={0, 1, 2, 3})
    ahead.after_change(tasks, 0)  # mkdir -p /srv/a: /srv/a and /srv (its parent) are stale
    assert sorted(ahead.facts) == [1, 2]
    ahead.after_change(tasks, 4)  # a command's reach is unknown: everything is stale
    assert ahead.facts == {}
    through_link = Prefetched({1: {}, 2: {}}, canonical={0, 1})
    through_link.after_change(tasks, 0)
    assert sorted(through_link.facts) == [1]  # task 2's path goes through a symlink
