"""Per-host task arguments (issue 20 item 5): one Runner, three hosts whose paths, ports
and owners differ, one recap."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from deploykit.connection import Connection
from deploykit.hostargs import literal, per_host
from deploykit.inventory import Host, Inventory
from deploykit.runner import Runner, step
from deploykit.tasks import files
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

Ssh = Callable[[str], Connection]

SITES = {"web-1": ("/srv/site-a", 8001, "www-data"),
         "web-2": ("/srv/site-b", 8002, "nobody"),
         "db-1": ("/srv/site-c", 8003, "daemon")}


def _fleet(inventory: Inventory) -> list[Host]:
    hosts = []
    for host in inventory.select("all"):
        root, port, user = SITES[host.name]
        hosts.append(dataclasses.replace(host, vars={**host.vars, "app_root": root,
                                                     "app_port": port, "app_user": user}))
    return hosts


def test_one_runner_serves_hosts_whose_paths_ports_and_users_differ(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    steps = [
        per_host(files.directory, "{{ app_root }}", mode=0o750,
                 owner=lambda host: host.vars["app_user"]),
        per_host(files.file, "{{ app_root }}/app.ini",
                 "host={{ inventory_hostname }}\nport={{ app_port }}\n", mode=0o640),
        per_host(lambda host: files.symlink(f"{host.vars['app_root']}/current", "app.ini")),
        per_host(files.file, "{{ app_root }}/raw.txt", literal("{{ kept }}\n")),
    ]
    hosts = _fleet(lab_inventory)
    report = Runner(steps).run(hosts)
    assert report.ok, report.to_json()
    assert sorted(report.hosts) == sorted(SITES)  # one recap for the whole fleet
    for name, (root, port, user) in SITES.items():
        conn = lab_connection(name)
        out = conn.run(f"stat -c '%U %a' {root}; cat {root}/app.ini; readlink {root}/current; "
                       f"cat {root}/raw.txt; ls /srv").stdout.splitlines()
        others = sorted(r for n, (r, _, _) in SITES.items() if n != name)
        assert out[:5] == [f"{user} 750", f"host={name}", f"port={port}", "app.ini",
                           "{{ kept }}"], name
        assert not any(o.rsplit("/", 1)[1] in out[5:] for o in others), name
        assert report.hosts[name].results[1].task == f"files.file {root}/app.ini"
    again = Runner(steps).run(hosts)
    assert all(r.status.value == "ok" for h in again.hosts.values() for r in h.results)


def test_an_undefined_host_var_fails_that_host_only_naming_it(
    clean_lab: Lab, lab_inventory: Inventory, lab_connection: Ssh
) -> None:
    hosts = _fleet(lab_inventory)
    hosts[0] = dataclasses.replace(hosts[0], vars={k: v for k, v in hosts[0].vars.items()
                                                   if k != "app_root"})
    report = Runner([step(per_host(files.directory, "{{ app_root }}"), name="site dir")]).run(
        hosts)
    bad = report.hosts[hosts[0].name].results[0]
    assert bad.failed and "'app_root' is undefined" in bad.message
    for other in hosts[1:]:
        assert report.hosts[other.name].results[0].changed
