"""Production as a team has it (issue 20), through ``invoke`` on real lab hosts.

One lab in the bastion topology (``bastion_lab``): ``bastion-1`` on the lab network,
``web-1``, ``web-2`` and ``db-1`` on an inner network the controller has no route to.
The project is a temporary directory with

* ``deploykit.yml``: the base, naming ``lab.yml`` (the lab's own names, as root);
* ``deploykit.production.yml``: the production environment, naming
  ``production.yml``: the web hosts called ``prod-1``/``prod-2``, every host logged
  in to as the non-root ``deploy`` user with ``become`` (sudo -n), every host behind
  the bastion reached with ``jump: bastion``, host keys strictly checked.

The tests share one evolving fleet, in order: v1 on ``prod-1`` alone (``--host prod-1
-e production``), then on ``prod-2``; v2 over the whole fleet through the bastion; a
broken version refused; ``rollback``; ``backup`` and ``restore``; the day-2 commands;
an unknown host key (bastion or inner host) refused; and last, a missing sudo right.
Users' HTTP requests come from the bastion (the only host that reaches the web hosts).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.testing.lab import Lab
from deploykit.testing.sample import drop_databases, write_config

pytestmark = pytest.mark.lab

APP = "sampleapp"
PROD = {"prod-1": "web-1", "prod-2": "web-2"}
"""Production name -> the lab host it is."""


def production_inventory(lab: Lab, known_hosts: Path | None = None) -> dict[str, Any]:
    """The production inventory a team writes: names of its own, the deploy user with
    become, the bastion as a jump host of every host behind it."""
    behind = {"jump": "bastion"}
    return {"all": {
        "vars": {"user": "deploy", "become": True, "identity_file": str(lab.identity_file),
                 "known_hosts": str(known_hosts or lab.known_hosts), "ssh_config": "none"},
        "children": {
            "bastions": {"hosts": {"bastion": {"address": lab.address("bastion-1")}}},
            "web": {"hosts": {name: {"address": lab.address(host), **behind}
                              for name, host in PROD.items()}},
            "db": {"hosts": {"db-1": {
                "address": lab.address("db-1"), **behind, "postgres_port": 5432,
                "postgres_user": "postgres",
                "postgres_password_file": str(lab.postgres_password_file),
                "redis_port": 6379}}},
        },
    }}


@dataclass
class Prod:
    """The project directory, the CLI and the lab."""

    root: Path
    project_root: Path
    lab: Lab
    env: dict[str, str]

    def cli(self, *args: str, environment: str | None = "production"
            ) -> subprocess.CompletedProcess[str]:
        """``invoke ARGS`` from the project root (``-e``/``--environment`` added)."""
        where = ["--environment", environment] if environment else []
        argv = [str(self.project_root / ".venv" / "bin" / "invoke"), *args, *where]
        done = subprocess.run(argv, cwd=self.project_root, env=self.env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
        return done

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("deploy", "--yes", *args)

    def serving(self, name: str) -> str | None:
        """The version users of production host ``name`` get through nginx (asked from
        the bastion: nothing else reaches it)."""
        url = f"http://{self.lab.address(PROD[name])}/version"
        out = self.lab.nsenter("bastion-1", ["curl", "-s", "-m", "10", url], check=False)
        try:
            return str(json.loads(out.stdout)["version"])
        except (ValueError, KeyError, TypeError):
            return None

    def history(self, lab_host: str) -> list[dict[str, Any]]:
        """history.jsonl on a lab host, read as root (not through deploykit)."""
        out = self.lab.nsenter(lab_host, ["cat", f"/var/lib/deploykit/{APP}/history.jsonl"],
                               check=False).stdout
        return [json.loads(line) for line in out.splitlines()]

    def owner(self, lab_host: str, path: str) -> str:
        return self.lab.nsenter(lab_host, ["stat", "-c", "%U", path]).stdout.strip()


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def prod(bastion_lab: Lab, project_root: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prod]:
    root = tmp_path_factory.mktemp("production")
    (root / "lab.yml").write_text(yaml.safe_dump(bastion_lab.inventory()))
    (root / "production.yml").write_text(yaml.safe_dump(production_inventory(bastion_lab)))
    write_config(root / "deploykit.yml", {
        "app": APP, "source": str(project_root / "examples" / "app"),
        "wheelhouse": str(project_root / ".cache" / "wheelhouse"),
        "inventory": "lab.yml", "web": "web", "db": "db",
        "verify_requests": 5, "grace_seconds": 1, "lock_ttl_minutes": 30,
        "database": {"name": APP},
        "env": {"DATABASE_URL": "${database_url}", "REDIS_URL": "${redis_url}"},
        "preflight": {"min_disk_mb": 64, "min_memory_mb": 32, "ports_listening": [80],
                      "reachable": ["db:5432", "db:6379"],
                      "required_secrets": ["DATABASE_URL"]},
    })
    write_config(root / "deploykit.production.yml", {"inventory": "production.yml"})
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "DEPLOYKIT_CONFIG": str(root / "deploykit.yml")}
    for name in ("DEPLOYKIT_WHEELHOUSE", "DEPLOYKIT_ENV"):
        env.pop(name, None)
    bastion_lab.reset()
    db = Inventory.from_dict(bastion_lab.inventory(), source="<bastion lab>").host("db-1")
    with Connection(db) as conn:
        drop_databases(conn, APP)
    try:
        yield Prod(root, project_root, bastion_lab, env)
    finally:
        bastion_lab.reset()
        with Connection(db) as conn:
            drop_databases(conn, APP)


# -- item 3: -e production picks the production inventory --------------------------------


def test_host_prod_1_with_e_production_deploys_to_that_host_only(prod: Prod) -> None:
    # without the environment, prod-1 is nobody: the base names the lab's hosts
    wrong = prod.cli("deploy", "--yes", "--host", "prod-1", "--version", "v1",
                     environment=None)
    assert wrong.returncode == 1
    assert any("prod-1" in line for line in error_lines(wrong)), wrong.stderr
    done = prod.deploy("--host", "prod-1", "--version", "v1")
    out = ok(done)
    assert re.search(r"^deploy \S+: \S+ v1 to prod-1 ", out, re.MULTILINE), out
    assert "v1 serves on blue" in out
    assert prod.serving("prod-1") == "v1"
    assert prod.serving("prod-2") is None  # web-2 was not touched
    assert prod.lab.nsenter("web-2", ["test", "-e", f"/srv/{APP}"], check=False).returncode
    # everything was done as the deploy user through sudo: files belong where they should
    assert prod.owner("web-1", f"/srv/{APP}/releases/v1") in ("root", "www-data")
    [start, end] = prod.history("web-1")
    assert (start["event"], end["result"], end["version_to"]) == ("start", "succeeded", "v1")
    assert prod.history("web-2") == []


def test_deploykit_env_selects_it_too(prod: Prod) -> None:
    prod.env["DEPLOYKIT_ENV"] = "production"
    try:
        out = ok(prod.cli("deploy", "--yes", "--host", "prod-2", "--version", "v1",
                          environment=None))
    finally:
        del prod.env["DEPLOYKIT_ENV"]
    assert re.search(r"^deploy \S+: \S+ v1 to prod-2 ", out, re.MULTILINE), out
    assert prod.serving("prod-2") == "v1"


# -- item 1: a whole blue/green deploy through the bastion -------------------------------


def test_a_whole_blue_green_deploy_through_the_bastion(prod: Prod) -> None:
    out = ok(prod.deploy("--version", "v2"))
    assert "v2 serves on green; blue stopped" in out, out
    for name in PROD:
        assert prod.serving(name) == "v2"
    for lab_host in (*PROD.values(), "db-1"):
        end = prod.history(lab_host)[-1]
        assert (end["result"], end["version_to"]) == ("succeeded", "v2"), lab_host


def test_a_broken_version_is_refused_and_traffic_stays(prod: Prod) -> None:
    done = prod.deploy("--version", "v3-broken")
    assert done.returncode == 1
    [line] = error_lines(done)
    assert "health gate: blue /health' failed on prod-1, prod-2; traffic stays on green" \
        in line, line
    for name in PROD:
        assert prod.serving(name) == "v2"


# -- item 2: rollback, backup and restore, the day-2 commands as the deploy user ----------


def test_rollback_goes_back_to_v1(prod: Prod) -> None:
    out = ok(prod.cli("rollback", "--yes"))
    assert re.search(r"^rollback \S+: sampleapp: app v2 -> v1", out, re.MULTILINE), out
    for name in PROD:
        assert prod.serving(name) == "v1"


def test_backup_and_restore(prod: Prod) -> None:
    out = ok(prod.cli("backup"))
    match = re.search(r": (/var/backups/\S+\.dump) \(\d+ bytes\), checksum verified", out)
    assert match, out
    path = match.group(1)
    assert prod.lab.nsenter("db-1", ["test", "-s", path], check=False).returncode == 0
    restored = ok(prod.cli("restore", "--backup", path, "--yes"))
    assert path in restored, restored
    for name in PROD:
        assert prod.serving(name) == "v1"


def test_status_history_exec_and_logs(prod: Prod) -> None:
    status = json.loads(ok(prod.cli("status", "--json", "-")))
    rows = {row["name"]: row for row in status} if isinstance(status, list) else status
    assert set(PROD) <= set(map(str, rows)), status
    history = json.loads(ok(prod.cli("history", "--limit", "20", "--json", "-")))
    results = [row["result"] for row in history]
    assert results.count("succeeded") >= 3 and "failed" in results, results
    who = ok(prod.cli("exec", "--command", "id -un", "--host", "prod-1"))
    assert "prod-1 | deploy" in who, who
    root = ok(prod.cli("exec", "--sudo", "--command", "id -un", "--host", "prod-1"))
    assert "prod-1 | root" in root, root
    logs = ok(prod.cli("logs", "--lines", "5", "--host", "prod-2"))
    assert "prod-2" in logs and "prod-1" not in logs, logs
    verified = ok(prod.cli("verify"))  # through nginx on hosts only the bastion reaches
    assert verified.count("healthy, v1") == 2, verified


def test_exec_takes_e_production_like_every_command(prod: Prod) -> None:
    """``-e`` is the environment everywhere; for ``exec`` it was ``--check``."""
    argv = [str(prod.project_root / ".venv" / "bin" / "invoke"), "exec", "-e", "production",
            "-c", "hostname", "--host", "prod-1"]
    done = subprocess.run(argv, cwd=prod.project_root, env=prod.env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prod-1 | web-1" in done.stdout


# -- strict host keys for the bastion and the hosts behind it ----------------------------


@pytest.mark.parametrize("forgotten", ["bastion-1", "web-2"])
def test_an_unknown_host_key_is_refused_naming_the_host(prod: Prod, forgotten: str) -> None:
    known = prod.root / f"known_hosts-without-{forgotten}"
    known.write_text("".join(line + "\n" for line in prod.lab.known_hosts.read_text()
                             .splitlines()
                             if not line.startswith(f"{prod.lab.address(forgotten)} ")))
    inventory = prod.root / f"production-without-{forgotten}.yml"
    inventory.write_text(yaml.safe_dump(production_inventory(prod.lab, known)))
    done = prod.cli("exec", "--command", "true", "--host", "prod-2",
                    "--inventory", str(inventory))
    assert done.returncode == 1
    text = done.stdout + done.stderr
    assert prod.lab.address(forgotten) in text, text
    assert "host key" in text.lower(), text
    assert "ssh-keyscan" in text or "known_hosts" in text, text


# -- last: a missing sudo right ------------------------------------------------------------


def test_a_missing_sudo_right_names_the_command_and_the_host(prod: Prod) -> None:
    sudoers = "/etc/sudoers.d/deploy"
    before = prod.lab.nsenter("web-2", ["cat", sudoers]).stdout
    prod.lab.nsenter("web-2", ["sh", "-c", "echo 'deploy ALL=(root) NOPASSWD: /usr/bin/true'"
                                           f" > {sudoers}"])
    try:
        done = prod.deploy("--host", "prod-2", "--version", "v2")
    finally:
        prod.lab.nsenter("web-2", ["sh", "-c", f"printf %s {shlex.quote(before)} > {sudoers}"])
    assert done.returncode == 1
    lines = error_lines(done)
    assert any("sudo" in line and "prod-2" in line
               and re.search(r"refused|not allowed|password is required", line)
               for line in lines), done.stdout + done.stderr
    assert prod.serving("prod-2") == "v1"
