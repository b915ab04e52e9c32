"""The deploy pipeline through the real CLI (``invoke deploy`` ...) on the lab, in order.

Every command runs as a subprocess of ``invoke`` from the project root, with
``DEPLOYKIT_CONFIG`` naming a deploykit.yml written into a temporary
directory (its inventory written from ``lab.inventory()``); run reports and logs
land there too. A real HTTP server on 127.0.0.1 plays the webhook receiver and
the CI status API; a second webhook points at a port where nothing listens.

The tests share one evolving fleet, like a week of operations: v1 on web-1
alone, then web-2; a check run; a deploy refused by a held lock; pre-flight
failures; v2 (notifications, a skipped check); status and history against the
hosts; ``rollback --db``; a deploy interrupted by SIGINT after its switch;
``invoke lock``/``unlock``; and last, no secret in any report, log or history.
The hosts are reset and the app's databases dropped before and after.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import testinfra.host
import yaml

from deploykit import journal, pg
from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.pg import PgSettings
from deploykit.result import RunReport
from deploykit.tasks import http
from deploykit.testing.lab import Lab
from deploykit.testing.sample import drop_databases, write_config

pytestmark = pytest.mark.lab

APP = "sampleapp"
HOSTS = ("web-1", "web-2", "db-1")
WEB = ("web-1", "web-2")
SLACK_SECRET = "T000-B000-not-for-your-eyes"
CI_FAILURE = {"state": "failure", "statuses": [
    {"context": "unit-tests", "state": "failure", "description": "3 failed"},
    {"context": "lint", "state": "success", "description": ""}]}
STATE = ("find /srv /etc/nginx/conf.d /etc/nginx/deploykit /etc/supervisor/conf.d "
         "/var/lib/deploykit /var/backups -printf '%p %y %s %T@ %m %l\\n' 2>/dev/null | sort; "
         "supervisorctl -c /etc/supervisor/supervisord.conf status 2>/dev/null | "
         "awk '{print $1, $2}'")


# -- a real local webhook receiver (and CI status API) -------------------------------------


class Receiver:
    """``POST /hook``: recorded; ``GET /ci``: a combined CI status (failure)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                data = json.dumps(CI_FAILURE).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, deploy_id: str) -> list[tuple[str, dict[str, Any]]]:
        """``(event, body)`` of the generic webhook posts for one deploy."""
        return [(body["event"], body) for path, body in self.posts
                if path == "/hook" and body.get("deploy_id") == deploy_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dead_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- the project under test ----------------------------------------------------------------


@dataclass
class Pipeline:
    """A deploykit.yml in a temporary directory, the CLI, the lab and its hosts."""

    root: Path
    project_root: Path
    lab: Lab
    inventory: Inventory
    receiver: Receiver
    ssh: Callable[[str], Connection]
    infra: Callable[[str], testinfra.host.Host]
    base: dict[str, Any]
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def config(self, name: str = "deploykit.yml", **changes: Any) -> Path:
        """Write a deploykit.yml (the base with ``changes`` merged one level deep)."""
        return write_config(self.root / name, self.base, **changes)

    def command(self, *args: str, config: Path | None = None) -> tuple[list[str], dict[str, str]]:
        env = {**self.env, "DEPLOYKIT_CONFIG": str(config or self.root / "deploykit.yml")}
        return [str(self.project_root / ".venv" / "bin" / "invoke"), *args], env

    def cli(self, *args: str, config: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``invoke ARGS`` from the project root; keep its output for the secrets test."""
        argv, env = self.command(*args, config=config)
        done = subprocess.run(argv, cwd=self.project_root, env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=300, check=False)
        self.outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def deploy(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cli("deploy", "--yes", *args, **kwargs)

    @property
    def runs(self) -> Path:
        return self.root / ".deploykit" / "runs"

    def address(self, host: str) -> str:
        return self.inventory.host(host).address

    def serving(self, host: str) -> str | None:
        """The version users of ``host`` get through nginx (None: not the app)."""
        response = http.request(f"http://{self.address(host)}/version")
        try:
            return str(response.json()["version"]) if response.status == 200 else None
        except (ValueError, KeyError):
            return None

    def ensure(self, version: str) -> None:
        """Bring both web hosts to ``version`` (one host at a time: their colours may
        differ), unless they already serve it."""
        for host in WEB:
            if self.serving(host) != version:
                done = self.deploy("--host", host, "--version", version)
                assert done.returncode == 0, done.stdout + done.stderr

    def history(self, host: str) -> list[dict[str, Any]]:
        """history.jsonl on ``host``, read directly (not through deploykit)."""
        f = self.infra(host).file(f"/var/lib/deploykit/{APP}/history.jsonl")
        return [json.loads(line) for line in f.content_string.splitlines()] if f.exists \
            else []

    def state(self, host: str) -> str:
        return self.lab.nsenter(host, ["sh", "-c", STATE]).stdout

    def sql(self, query: str, database: str = APP) -> list[tuple[Any, ...]]:
        with pg.connect(self.ssh("db-1"), database) as session:
            cursor = session.execute(query)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def add_item(self, name: str) -> None:
        response = http.request(f"http://{self.address('web-1')}/api/items", method="POST",
                                body=json.dumps({"name": name}).encode(),
                                headers={"Content-Type": "application/json"})
        assert response.status == 201, response.describe()

    def items(self) -> list[str]:
        response = http.request(f"http://{self.address('web-1')}/api/items")
        return [item["name"] for item in response.json()["items"]]


def deploy_id(output: str) -> str:
    """The deploy id a command announced (``deploy <id>: ...``)."""
    match = re.search(r"^(?:deploy|rollback) (\S+): ", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]




@pytest.fixture(scope="module")
def pipeline(lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
             lab_host: Callable[[str], testinfra.host.Host], project_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("pipeline")
    (root / "lab.yml").write_text(yaml.safe_dump(lab.inventory()))
    receiver = Receiver()
    base: dict[str, Any] = {
        "app": APP, "source": str(project_root / "examples" / "app"),
        "wheelhouse": str(project_root / ".cache" / "wheelhouse"),
        "inventory": "lab.yml", "web": "web", "db": "db",
        "verify_requests": 10, "grace_seconds": 1, "lock_ttl_minutes": 30,
        "database": {"name": APP},
        "env": {"DATABASE_URL": "${database_url}", "REDIS_URL": "${redis_url}"},
        "preflight": {"min_disk_mb": 64, "min_memory_mb": 32, "ports_listening": [80],
                      "reachable": ["db:5432"], "required_secrets": ["DATABASE_URL"]},
        "notify": {"webhook_url": f"{receiver.url}/hook",
                   "slack_webhook_url": "${env:DK_TEST_SLACK_URL}", "timeout": 3},
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "DK_TEST_SLACK_URL": f"http://127.0.0.1:{dead_port()}/services/{SLACK_SECRET}"}
    env.pop("DEPLOYKIT_WHEELHOUSE", None)
    p = Pipeline(root, project_root, lab, lab_inventory, receiver, lab_connection, lab_host,
                 base, env)
    p.config()
    lab.reset()
    drop_databases(lab_connection("db-1"), APP)
    try:
        yield p
    finally:
        receiver.close()
        lab.reset()
        drop_databases(lab_connection("db-1"), APP)


# -- the story -----------------------------------------------------------------------------


def test_deploy_to_one_host(pipeline: Pipeline) -> None:
    done = pipeline.deploy("--host", "web-1", "--version", "v1")
    assert done.returncode == 0, done.stdout + done.stderr
    did = deploy_id(done.stdout)
    assert f"deploy {did}: succeeded" in done.stdout
    assert "v1 serves on blue" in done.stdout
    assert "database sampleapp does not exist yet (first deploy)" in done.stdout
    assert pipeline.serving("web-1") == "v1"
    web2 = pipeline.infra("web-2")
    assert not web2.file(f"/srv/{APP}").exists and pipeline.serving("web-2") is None
    assert pipeline.infra("web-1").file(f"/srv/{APP}/current").linked_to == \
        f"/srv/{APP}/releases/v1"
    for host in ("web-1", "db-1"):  # locked and journaled: the web host and the db host
        start, end = pipeline.history(host)
        assert (start["event"], end["event"], end["id"], end["result"]) == \
            ("start", "end", did, "succeeded")
        assert end["version_to"] == "v1" and "version_from" not in end
    assert pipeline.history("web-2") == []
    report = RunReport.read_json(pipeline.runs / f"{did}.json")
    final = report.hosts["(controller)"].results[-1]
    assert (final.task, final.status.value) == ("deploy", "changed")
    assert report.hosts["web-1"].counts["failed"] == 0
    assert (pipeline.runs / f"{did}.log").stat().st_mode & 0o777 == 0o600


def test_check_mode_changes_nothing(pipeline: Pipeline) -> None:
    pipeline.ensure("v1")
    before = {h: pipeline.state(h) for h in HOSTS}
    schema = pipeline.sql("SELECT max(version) FROM schema_migrations")
    done = pipeline.cli("deploy", "--version", "v2", "--check")  # no --yes needed
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would deploy v2 to green and switch traffic from blue to green" in done.stdout
    assert "-    server 127.0.0.1:8001;" in done.stdout and "+    server 127.0.0.1:8002;" \
        in done.stdout  # the diff of the switch
    assert {h: pipeline.state(h) for h in HOSTS} == before
    for host in WEB:
        infra = pipeline.infra(host)
        assert not infra.file(f"/srv/{APP}/releases/v2").exists
        assert infra.file(f"/etc/nginx/conf.d/{APP}_upstream.conf").contains("127.0.0.1:8001;")
        assert pipeline.serving(host) == "v1"
    assert pipeline.sql("SELECT max(version) FROM schema_migrations") == schema == [(1,)]
    assert pipeline.receiver.events(deploy_id(done.stdout)) == []


def test_a_second_deploy_gets_the_lock_error(pipeline: Pipeline) -> None:
    pipeline.ensure("v1")
    conns = [pipeline.ssh(h) for h in HOSTS]
    with journal.fleet_lock(conns, APP, "test-holder-42") as lock:
        done = pipeline.deploy("--version", "v2")
        lock.end("aborted", message="test over")
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert re.fullmatch(r"error: locked by \S+ \(deploy test-holder-42, pid \d+\) since \S+ "
                        r"on db-1; held for \d+ s", line), line
    did = deploy_id(done.stdout)
    for host in HOSTS:
        assert did not in {e["id"] for e in pipeline.history(host)}
        assert pipeline.serving(host) in ("v1", None)
    assert pipeline.receiver.events(did) == []


@pytest.mark.parametrize(("check", "changes", "extra_env", "message"), [
    pytest.param(
        "resources", {"preflight": {"min_disk_mb": 10 ** 9}}, {},
        r"\[web-1\] resources: disk: / has [\d.]+ \w+ free \([\d.]+% of [\d.]+ \w+\), "
        r"needs at least 953.7 TiB", id="resources"),
    pytest.param(
        "ports", {"preflight": {"ports_free": [22]}}, {},
        r"\[web-1\] ports: TCP port\(s\) 22 already in use \(must be free\)", id="ports"),
    pytest.param(
        "ci", {"preflight": {"ci_status_url": "CI/ci/status"}}, {},
        r"\[\(controller\)\] ci: CI status of the commit is failure: unit-tests failure "
        r"\(3 failed\)", id="ci"),
    pytest.param(
        "secrets", {"env": {"DATABASE_URL": "${database_url}",
                            "SECRET_KEY": "${env:DK_TEST_KEY}"},
                    "preflight": {"required_secrets": ["DATABASE_URL", "SECRET_KEY"]}},
        {"DK_TEST_KEY": "changeme"},
        r"\[\(controller\)\] secrets: secrets in the app's \.env \(env in deploykit\.yml\): "
        r"SECRET_KEY is a known default value", id="secrets"),
])
def test_each_failing_preflight_check_gives_its_own_message(
        pipeline: Pipeline, check: str, changes: dict[str, Any], extra_env: dict[str, str],
        message: str) -> None:
    pipeline.ensure("v1")
    if "ci_status_url" in changes.get("preflight", {}):
        changes["preflight"]["ci_status_url"] = f"{pipeline.receiver.url}/ci/status"
    config = pipeline.config(f"preflight-{check}.yml", **changes)
    before = {h: len(pipeline.history(h)) for h in HOSTS}
    done = pipeline.deploy("--version", "v2", config=config, extra_env=extra_env)
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert re.search(message, line), line
    # only this check failed: every other check passed
    failed = {m.group(1) for m in re.finditer(r"\] ([\w-]+)(?: [^:]*)?: ", line)}
    assert failed == {check}, line
    listed = [m.groups() for x in done.stdout.splitlines()
              if (m := re.match(r"\s+(ok|failed|skipped)\s+([\w-]+)", x))]
    assert {name for status, name in listed if status == "failed"} == {check}
    assert {name for status, name in listed if status == "ok"} == \
        {"resources", "ports", "reachable", "secrets"} - {check}
    # nothing changed: no lock taken, no history written, still v1; the failure is notified
    assert {h: len(pipeline.history(h)) for h in HOSTS} == before
    assert [pipeline.serving(h) for h in WEB] == ["v1", "v1"]
    sent = pipeline.receiver.events(deploy_id(done.stdout))
    assert [(event, body["result"]) for event, body in sent] == [("failure",
                                                                    "pre-flight failed")]
    report = RunReport.read_json(pipeline.runs / f"{deploy_id(done.stdout)}.json")
    assert any(r.task == check and r.failed for h in report.hosts.values() for r in h.results)


@dataclass
class V2:
    """What the v2 deploy left for the tests that follow."""

    deploy_id: str
    done: subprocess.CompletedProcess[str]
    json_report: Path


@pytest.fixture(scope="module")
def v2(pipeline: Pipeline) -> V2:
    """v1 with an item, then v2 deployed with a check that would fail skipped on request."""
    pipeline.ensure("v1")
    pipeline.add_item("before-v2")
    config = pipeline.config("skip.yml", preflight={"ports_free": [22]})
    report = pipeline.root / "v2-report.json"
    done = pipeline.deploy("--version", "v2", "--skip-check", "ports", "--json", str(report),
                           config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    return V2(deploy_id(done.stdout), done, report)


def test_v2_deploy_notifies_records_the_skip_and_backs_up_first(pipeline: Pipeline,
                                                                v2: V2) -> None:
    assert [pipeline.serving(h) for h in WEB] == ["v2", "v2"]
    # the webhook got start then success; the Slack receiver is down: warned, not failed
    events = pipeline.receiver.events(v2.deploy_id)
    assert [e for e, _ in events] == ["start", "success"]
    success = events[1][1]
    assert (success["version"], success["result"], success["hosts"]) == \
        ("v2", "succeeded", list(WEB))
    assert "v2 serves on green" in success["message"]
    assert re.search(r"warning: slack notification \(start\) not delivered: cannot reach "
                     r"http://127\.0\.0\.1:\d+/\*{8}", v2.done.stdout)
    report = RunReport.read_json(v2.json_report)
    notes = {r.task: r for r in report.hosts["(controller)"].results
             if r.task.startswith("notify")}
    assert notes["notify webhook (success)"].data["delivered"] is True
    assert notes["notify slack (success)"].data["delivered"] is False
    # the skipped check: in the report and in the journal, on every host
    skipped = [(h, r.message) for h, hr in report.hosts.items() for r in hr.results
               if r.task == "ports"]
    assert skipped == [("web-1", "skipped on request (skip list)"),
                       ("web-2", "skipped on request (skip list)")]
    for host in HOSTS:
        end = pipeline.history(host)[-1]
        assert (end["id"], end["event"], end["result"]) == (v2.deploy_id, "end", "succeeded")
        assert "pre-flight checks skipped on request: ports" in end["message"]
    # the backup was taken before the migrations: it holds v1's schema, named after the deploy
    dump = f"/var/backups/{APP}/{APP}-{v2.deploy_id}.dump"
    db = pipeline.infra("db-1")
    assert db.file(dump).exists and db.file(dump).mode == 0o600
    assert db.file(f"{dump}.sha256").exists
    assert pipeline.sql("SELECT max(version) FROM schema_migrations") == [(2,)]


def test_status_and_history_agree_with_the_hosts(pipeline: Pipeline, v2: V2) -> None:
    status = {row["name"]: row for row in json.loads(pipeline.cli("status", "--json", "-")
                                                     .stdout)}
    assert set(status) == set(HOSTS)
    for host in WEB:
        infra, row = pipeline.infra(host), status[host]
        marker = infra.file(f"/etc/nginx/deploykit/{APP}.active").content_string.strip()
        upstream = infra.file(f"/etc/nginx/conf.d/{APP}_upstream.conf").content_string
        assert row["color"] == marker == "green" and "127.0.0.1:8002;" in upstream
        releases = f"/srv/{APP}/releases"
        assert infra.file(f"/srv/{APP}/current").linked_to == f"{releases}/{row['current']}"
        assert infra.file(f"/srv/{APP}/green").linked_to == f"{releases}/{row['release']}"
        assert (row["release"], row["version"]) == ("v2", pipeline.serving(host))
        programs = dict(line.split()[:2] for line in infra.run(  # exit 3: one is stopped
            "supervisorctl -c /etc/supervisor/supervisord.conf status").stdout.splitlines())
        assert row["services"] == {f"{APP}-blue": programs[f"{APP}-blue"],
                                   f"{APP}-green": programs[f"{APP}-green"]}
        assert row["services"][f"{APP}-green"] == "RUNNING"
    for host in HOSTS:
        row = status[host]
        assert row["lock"] is None and not pipeline.infra(host).file(
            f"/var/lib/deploykit/{APP}/lock").exists
        ends = [e for e in pipeline.history(host) if e["event"] == "end"]
        assert (row["last"]["id"], row["last"]["result"]) == (ends[-1]["id"], ends[-1]["result"])
    rows = json.loads(pipeline.cli("history", "--limit", "50", "--json", "-").stdout)
    journaled: dict[str, set[tuple[str, str]]] = {}
    for host in HOSTS:
        for e in pipeline.history(host):
            if e["event"] == "end":
                journaled.setdefault(e["id"], set()).add((host, e["result"]))
    assert {r["id"]: set(r["results"].items()) for r in rows} == journaled
    assert rows[-1]["id"] == v2.deploy_id and rows[-1]["result"] == "succeeded"
    assert rows[-1]["version_from"] == {"web-1": "v1", "web-2": "v1", "db-1": "v1"}


def test_rollback_db_restores_the_pre_deploy_data(pipeline: Pipeline, v2: V2) -> None:
    pipeline.add_item("after-v2")
    assert set(pipeline.items()) == {"before-v2", "after-v2"}
    done = pipeline.cli("rollback", "--db", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [pipeline.serving(h) for h in WEB] == ["v1", "v1"]
    assert pipeline.items() == ["before-v2"]  # the row added after the backup is gone
    assert pipeline.sql("SELECT max(version) FROM schema_migrations") == [(1,)]
    [(kept,)] = pipeline.sql(f"SELECT datname FROM pg_database WHERE datname LIKE "
                             f"'{APP}\\_old\\_%'", "postgres")
    assert f"the previous one is kept as {kept}" in done.stdout
    pipeline.sql(f'ALTER DATABASE "{kept}" ALLOW_CONNECTIONS true', "postgres")
    assert {r[0] for r in pipeline.sql("SELECT name FROM items", kept)} == \
        {"before-v2", "after-v2"}  # the old database is kept, with everything
    did = deploy_id(done.stdout)
    for host in HOSTS:
        end = pipeline.history(host)[-1]
        assert (end["id"], end["kind"], end["result"], end["version_to"]) == \
            (did, "rollback", "succeeded", "v1")
    assert [e for e, _ in pipeline.receiver.events(did)] == ["start", "rollback"]


def test_sigint_after_the_switch_puts_traffic_back(pipeline: Pipeline) -> None:
    pipeline.ensure("v1")
    argv, env = pipeline.command("deploy", "--yes", "--version", "v2")
    proc = subprocess.Popen(argv, cwd=pipeline.project_root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"changed\s+nginx: traffic to green", line):
            proc.send_signal(signal.SIGINT)  # traffic has just moved on one host
            break
    out = "".join(lines) + proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    pipeline.outputs += [out, err]
    did = deploy_id(out)
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith(f"error: deploy {did} aborted: interrupted (SIGINT) during "
                           f"'switch traffic and verify it'; traffic is on blue (v1)")
    for host in WEB:
        assert pipeline.serving(host) == "v1"
        infra = pipeline.infra(host)
        assert infra.file(f"/etc/nginx/deploykit/{APP}.active").content_string.strip() == "blue"
        assert infra.file(f"/srv/{APP}/current").linked_to == f"/srv/{APP}/releases/v1"
        assert f"{APP}-green" in infra.check_output(
            "supervisorctl -c /etc/supervisor/supervisord.conf status | grep STOPPED")
    for host in HOSTS:
        assert journal.lock_status(pipeline.ssh(host), APP) is None
        end = pipeline.history(host)[-1]
        assert (end["id"], end["event"], end["result"]) == (did, "end", "aborted")
        assert "interrupted (SIGINT)" in end["message"]
    assert [e for e, _ in pipeline.receiver.events(did)] == ["start", "failure"]


def test_rollback_migrations_uses_the_down_files_of_the_release_that_applied_them(
        pipeline: Pipeline) -> None:
    # the interrupted v2 deploy migrated the database before it was stopped: v1 serves,
    # on v2's schema, and v1's artifact has no down file for v2's migration
    assert [pipeline.serving(h) for h in WEB] == ["v1", "v1"]
    [(version, applied_by)] = pipeline.sql(
        "SELECT version, deploy_id FROM schema_migrations ORDER BY version DESC LIMIT 1")
    assert version == 2
    done = pipeline.cli("rollback", "--no-app", "--migrations", "1", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 migration(s) rolled back with v2's down files" in done.stdout
    assert pipeline.sql("SELECT max(version) FROM schema_migrations") == [(1,)]
    assert pipeline.sql("SELECT count(*) FROM information_schema.columns WHERE "
                        "table_name = 'items' AND column_name = 'note'") == [(0,)]
    assert [pipeline.serving(h) for h in WEB] == ["v1", "v1"]  # the app was left alone
    assert any(e["id"] == applied_by and e.get("version_to") == "v2"
               for e in pipeline.history("db-1"))


def test_backup_restore_verify_and_config_commands(pipeline: Pipeline) -> None:
    backup = pipeline.cli("backup")
    assert backup.returncode == 0, backup.stderr
    path = re.search(r": (/var/backups/\S+\.dump) ", backup.stdout).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(rf"/var/backups/{APP}/{APP}-manual-\d{{8}}T\d{{6}}Z-[\w-]+\.dump", path)
    assert pipeline.infra("db-1").file(path).exists
    pipeline.add_item("after-the-backup")
    restored = pipeline.cli("restore", "--backup", path, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "after-the-backup" not in pipeline.items()
    verify = pipeline.cli("verify")
    assert verify.returncode == 0 and verify.stdout.count("healthy, v1") == 2, verify.stdout
    pipeline.lab.stop_service("web-2", "nginx")
    try:
        broken = pipeline.cli("verify")
    finally:
        pipeline.lab.start_service("web-2", "nginx")
    assert broken.returncode == 1
    assert re.search(r"web-2 +FAILED +health: connection refused by [\d.]+:80", broken.stdout)
    assert error_lines(broken.stderr) == ["error: verification failed (see above)"]
    config = pipeline.cli("config")
    assert config.returncode == 0
    assert "preflight.required_secrets" in config.stdout and "  app: sampleapp" in config.stdout


def test_verify_suite_runs_the_testinfra_suite_per_host(pipeline: Pipeline) -> None:
    suite = str(pipeline.project_root / "examples" / "verify")
    good = pipeline.cli("verify", "--suite", suite, "--group", "web")
    assert good.returncode == 0, good.stdout + good.stderr
    rows = {line.split()[1]: line for line in good.stdout.splitlines()
            if re.match(r"^\W*web-\d ", line)}
    assert set(rows) == {"web-1", "web-2"} and all(" ok " in r for r in rows.values()), rows
    junit = re.search(r"JUnit XML: (\S+\.junit\.xml)", good.stdout)
    assert junit is not None and Path(junit.group(1)).exists()

    env = f"/srv/{APP}/current/.env"  # the live release's own environment file
    pipeline.ssh("web-2").run(["chmod", "0644", env])
    try:
        broken = pipeline.cli("verify", "--suite", suite, "--host", "web-2")
    finally:
        pipeline.ssh("web-2").run(["chmod", "0600", env])
    assert broken.returncode == 1, broken.stdout
    assert re.search(r"web-2 .*FAILED.*env", broken.stdout), broken.stdout
    assert "web-1" not in broken.stdout
    assert error_lines(broken.stderr) == ["error: verification failed (see above)"]


def test_lock_and_unlock_commands(pipeline: Pipeline) -> None:
    locked = pipeline.cli("lock")
    assert locked.returncode == 0, locked.stderr
    lock_id = re.search(r" as (lock-\S+);", locked.stdout).group(1)  # type: ignore[union-attr]
    refused = pipeline.deploy("--version", "v2")
    assert refused.returncode == 1
    [line] = error_lines(refused.stderr)
    assert f"(deploy {lock_id}, pid " in line
    unlocked = pipeline.cli("unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    assert unlocked.stdout.count("removed locked by ") == 3 and unlocked.stderr == ""
    for host in HOSTS:
        assert journal.lock_status(pipeline.ssh(host), APP) is None
        assert [(e["event"], e["id"]) for e in pipeline.history(host)[-2:]] == \
            [("lock", lock_id), ("unlock", lock_id)]
    assert pipeline.cli("unlock").stdout.count(": not locked") == 3


def test_no_secret_in_any_report_log_or_history(pipeline: Pipeline) -> None:
    password = PgSettings.from_host(pipeline.inventory.host("db-1")).password
    assert password is not None
    secrets = {password.reveal(), urllib.parse.quote(password.reveal(), safe=""),
               SLACK_SECRET}
    # the grep can find them: the .env on the hosts holds the password, as it must
    dotenv = pipeline.infra("web-1").file(f"/srv/{APP}/current/.env").content_string
    assert urllib.parse.quote(password.reveal(), safe="") in dotenv
    files = [*sorted(pipeline.runs.iterdir()), pipeline.root / "v2-report.json"]
    assert len([f for f in files if f.suffix == ".log"]) >= 8
    texts = {str(f): f.read_text() for f in files}
    texts.update({f"{h}:history.jsonl": json.dumps(pipeline.history(h)) for h in HOSTS})
    texts.update({f"output {i}": text for i, text in enumerate(pipeline.outputs)})
    leaks = [(where, s[:4]) for where, text in texts.items() for s in secrets if s in text]
    assert leaks == []
    assert any("********" in text for text in texts.values())
