"""Hooks, secret sources, --lock-wait and --retry-failed through the real CLI on the lab
(the pipeline's setup, one evolving fleet).

Hooks are executables in ``hooks/`` beside a deploykit.yml in a temporary
directory. A sentinel secret set through ``${env:..}`` (the app's SECRET_KEY)
travels through every run at ``DEPLOYKIT_LOG_LEVEL=debug``, a hook that echoes it
and a hook failure; the last test looks for it everywhere deploykit writes.

``--lock-wait``: a lock held by this test process (another deploy, as far as the CLI
can tell) makes a deploy wait; released, the deploy goes on. ``--retry-failed``:
web-2's sshd is stopped, the fleet deploy fails with web-2 unreachable, and the retry
deploys to web-2 alone, leaving web-1 exactly as it was.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator

import pytest
from test_pipeline import (  # the pipeline's real-CLI setup, shared
    APP,
    HOSTS,
    Pipeline,
    deploy_id,
    error_lines,
    pipeline,
)

from deploykit import journal
from deploykit.result import RunReport

pytestmark = pytest.mark.lab
__all__ = ["pipeline"]

SENTINEL = "sentinel-Zq81-do-not-leak-4c2e"
HOOK_SCRIPTS = {
    # every hook leaves a trace (point, deploy id, version, hosts, result) in the project
    "pre_connect": "",
    "pre_switch": "",
    "post_switch": "",
    "on_failure": "",
    "pre_deploy.1-echo": 'echo "pre_deploy sees the key $DK_HOOK_SENTINEL"',
    "post_deploy": (  # invoke finds tasks.py in the repository; the config comes by env
        'cd "$DK_REPO"\n"$DK_INVOKE" status --json -\n'
        '"$DK_INVOKE" deploy --yes --host web-1 --version "$DEPLOYKIT_VERSION"'),
}
TRACE = ('echo "$DEPLOYKIT_HOOK $DEPLOYKIT_DEPLOY_ID $DEPLOYKIT_VERSION $DEPLOYKIT_HOSTS '
         '$DEPLOYKIT_RESULT" >> "$PWD/trace"\n')
UNTOUCHED = ("find /srv /etc/nginx /etc/supervisor/conf.d /var/backups -printf '%p %y %s %T@ "
             "%m %l\\n' 2>/dev/null | sort; supervisorctl -c /etc/supervisor/supervisord.conf "
             "status 2>/dev/null | awk '{print $1, $2}'")


@pytest.fixture(scope="module")
def project(pipeline: Pipeline) -> Iterator[Pipeline]:
    """The pipeline with hooks, a SECRET_KEY from ${env:..} and debug logging."""
    pipeline.env.update(DK_HOOK_SENTINEL=SENTINEL, DEPLOYKIT_LOG_LEVEL="debug",
                        DK_INVOKE=str(pipeline.project_root / ".venv" / "bin" / "invoke"),
                        DK_REPO=str(pipeline.project_root))
    pipeline.base["env"]["SECRET_KEY"] = "${env:DK_HOOK_SENTINEL}"
    pipeline.config()
    hooks = pipeline.root / "hooks"
    hooks.mkdir()
    for name, body in HOOK_SCRIPTS.items():
        path = hooks / name
        path.write_text(f"#!/bin/sh\nset -e\n{TRACE}{body}\n")
        path.chmod(0o755)
    yield pipeline


def trace(p: Pipeline) -> list[list[str]]:
    path = p.root / "trace"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [line.split(" ") for line in lines]


def test_a_failing_pre_deploy_hook_leaves_the_hosts_untouched(project: Pipeline) -> None:
    refuse = project.root / "hooks" / "pre_deploy.2-refuse"
    refuse.write_text(f'#!/bin/sh\n{TRACE}echo "no deploys on friday (key $DK_HOOK_SENTINEL)"'
                      "\nexit 3\n")
    refuse.chmod(0o755)
    before = {h: project.lab.nsenter(h, ["sh", "-c", UNTOUCHED]).stdout for h in HOSTS}
    try:
        done = project.deploy("--version", "v1", "--host", "web-1")
    finally:
        refuse.unlink()
    assert done.returncode == 1
    did = deploy_id(done.stdout)
    [line] = error_lines(done.stderr)
    assert line == (f"error: deploy {did} failed: hook pre_deploy (hooks/pre_deploy.2-refuse) "
                    f"exited with code 3; nothing was changed; its output ended with:")
    assert "\nno deploys on friday (key ********)" in done.stderr
    # releases, nginx, supervisor, backups: as they were; no database was created
    assert {h: project.lab.nsenter(h, ["sh", "-c", UNTOUCHED]).stdout for h in HOSTS} == before
    assert project.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{APP}'",
                       "postgres") == [(0,)]
    assert [t[0] for t in trace(project)] == ["pre_connect", "pre_deploy", "pre_deploy",
                                              "on_failure"]
    for host in ("web-1", "db-1"):  # the journal says why, and the lock is free
        end = project.history(host)[-1]
        assert (end["id"], end["result"]) == (did, "failed")
        assert end["message"].startswith("hook pre_deploy (hooks/pre_deploy.2-refuse) exited")
        assert journal.lock_status(project.ssh(host), APP) is None
    report = RunReport.read_json(project.runs / f"{did}.json")
    hooks = [(r.task, r.status.value) for r in report.hosts["(controller)"].results
             if r.task.startswith("hook")]
    assert hooks == [("hook pre_connect: hooks/pre_connect", "ok"),
                     ("hook pre_deploy: hooks/pre_deploy.1-echo", "ok"),
                     ("hook pre_deploy: hooks/pre_deploy.2-refuse", "failed"),
                     ("hook on_failure: hooks/on_failure", "ok")]


def test_hooks_run_in_order_and_a_post_deploy_hook_may_call_deploykit(
        project: Pipeline) -> None:
    done = project.deploy("--version", "v1", "--host", "web-1")
    assert done.returncode == 0, done.stdout + done.stderr
    did = deploy_id(done.stdout)
    assert project.serving("web-1") == "v1"
    calls = trace(project)
    assert calls == [[point, did, "v1", "web-1", result] for point, result in (
        ("pre_connect", ""), ("pre_deploy", ""), ("pre_switch", ""), ("post_switch", ""),
        ("post_deploy", "succeeded"))]
    # `invoke status` inside the hook: the lock is held by this very deploy
    assert re.search(rf'\[post_deploy\] +"lock": "locked by \S+ \(deploy {did}, pid \d+\) '
                     rf'since \S+ on web-1;', done.stdout), done.stdout
    # the nested deploy took the lock held by its parent (re-entrant), ran no hooks
    nested = re.search(r"\[post_deploy\] deploy (\S+): sampleapp v1 to web-1", done.stdout)
    assert nested, done.stdout
    inner = nested.group(1)
    assert re.search(rf"\[post_deploy\] == deploy {inner}: succeeded", done.stdout)
    for host in ("web-1", "db-1"):
        entries = [(e["event"], e["id"]) for e in project.history(host)[-4:]]
        assert entries == [("start", did), ("start", inner), ("end", inner), ("end", did)]
        assert journal.lock_status(project.ssh(host), APP) is None
    assert "debug: web-1: " in done.stderr  # the most verbose level: every remote command


def test_a_secret_file_readable_by_others_is_refused(project: Pipeline) -> None:
    key = project.root / "key.txt"
    key.write_text(SENTINEL + "\n")
    key.chmod(0o644)
    config = project.config("file-secret.yml", env={"DATABASE_URL": "${database_url}",
                                                    "API_KEY": "${file:key.txt}"})
    done = project.deploy("--version", "v1", "--host", "web-1", config=config)
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"error: file-secret.yml: env.API_KEY: secret file {key} has mode 0644: group or "
        f"others may read it; a secret file must be 0600 or stricter (chmod 600 {key})"]
    assert "deploy " not in done.stdout  # refused before a deploy id was even given
    key.chmod(0o600)
    shown = project.cli("config", "--show", config=config)
    assert shown.returncode == 0, shown.stderr
    assert "  API_KEY: '******** (${file:key.txt})'" in shown.stdout
    assert "  SECRET_KEY: '******** (${env:DK_HOOK_SENTINEL})'" in shown.stdout
    missing = project.cli("config", "--show", extra_env={"DK_HOOK_SENTINEL": ""})
    assert missing.returncode == 1
    assert error_lines(missing.stderr) == [
        "error: 1 secret(s) cannot be resolved: deploykit.yml: env.SECRET_KEY: environment "
        "variable DK_HOOK_SENTINEL is not set (or empty) (source ${env:DK_HOOK_SENTINEL})"]


# -- --lock-wait and --retry-failed (a config without hooks) --------------------------------


@pytest.fixture
def web2_unreachable(project: Pipeline) -> Iterator[None]:
    pipeline = project
    pipeline.lab.stop_service("web-2", "sshd")
    try:
        yield
    finally:
        pipeline.lab.start_service("web-2", "sshd")


def test_lock_wait_takes_the_lock_once_the_holder_is_done(project: Pipeline) -> None:
    pipeline = project
    config = pipeline.config("no-hooks.yml", hooks_dir="no-hooks")
    conns = [pipeline.ssh(h) for h in ("web-1", "db-1")]
    before = {h: len(pipeline.history(h)) for h in ("web-1", "db-1")}
    holding = journal.fleet_lock(conns, APP, "test-holder-7")
    lock = holding.__enter__()
    argv, env = pipeline.command("deploy", "--yes", "--version", "v1", "--host", "web-1",
                                 "--lock-wait", "3m", config=config)
    proc = subprocess.Popen(argv, cwd=pipeline.project_root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    released = threading.Event()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # release once the deploy says it waits, and only then
            lines.append(line)
            if "waiting up to" in line and not released.is_set():
                lock.end("succeeded", message="the holder is done")
                holding.__exit__(None, None, None)
                released.set()
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait(timeout=300)
    finally:
        if not released.is_set():
            holding.__exit__(None, None, None)
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    pipeline.outputs += [out, stderr]
    assert released.is_set() and proc.returncode == 0, out + stderr
    [waiting] = [x for x in lines if "waiting up to" in x]
    assert waiting.startswith("   waiting up to 3 min 00 s for the lock: locked by ")
    assert "(deploy test-holder-7, pid " in waiting
    did = deploy_id(out)
    assert f"deploy {did}: succeeded" in out and pipeline.serving("web-1") == "v1"
    for host in ("web-1", "db-1"):  # the waiter started after the holder ended
        events = [(e["event"], e["id"]) for e in pipeline.history(host)[before[host]:]]
        assert events == [("start", "test-holder-7"), ("end", "test-holder-7"),
                          ("start", did), ("end", did)]


def test_retry_failed_deploys_to_the_unreachable_host_only(project: Pipeline,
                                                          web2_unreachable: None) -> None:
    pipeline = project
    config = pipeline.root / "no-hooks.yml"
    assert pipeline.serving("web-1") == "v1" and pipeline.serving("web-2") is None
    web1 = pipeline.state("web-1")
    failed = pipeline.deploy("--version", "v1", config=config)
    assert failed.returncode == 1
    [line] = error_lines(failed.stderr)
    assert line.startswith("error: cannot reach web-2: ")
    first = deploy_id(failed.stdout)
    report = RunReport.read_json(pipeline.runs / f"{first}.json")
    assert [h for h, r in report.hosts.items() if r.unreachable] == ["web-2"]
    pipeline.lab.start_service("web-2", "sshd")
    retried = pipeline.deploy("--retry-failed", config=config)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert retried.stdout.startswith(f"retry of deploy {first}: web-2 unreachable: ")
    did = deploy_id(retried.stdout)
    assert f"deploy {did}: sampleapp v1 to web-2 (database" in retried.stdout
    assert pipeline.serving("web-2") == "v1"
    assert pipeline.state("web-1") == web1  # not a file, a program, a journal line changed
    assert {h for h in RunReport.read_json(pipeline.runs / f"{did}.json").hosts} == \
        {"web-2", "db-1", "(controller)"}
    again = pipeline.deploy("--retry-failed", config=config)
    assert error_lines(again.stderr) == [
        f"error: --retry-failed: the last deploy ({did}, succeeded) has no failed or "
        f"unreachable host: nothing to retry"]


def test_the_sentinel_secret_is_nowhere(project: Pipeline) -> None:
    # the .env on the host holds it, as it must: the search can find it
    env = project.infra("web-1").file(f"/srv/{APP}/current/.env").content_string
    assert f"SECRET_KEY={SENTINEL}" in env
    texts = {str(f): f.read_text() for f in sorted(project.runs.iterdir())}
    assert any(name.endswith(".log") for name in texts)
    texts.update({f"{h}:history": json.dumps(project.history(h)) for h in HOSTS})
    texts.update({f"output {i}": text for i, text in enumerate(project.outputs)})
    assert [where for where, text in texts.items() if SENTINEL in text] == []
    assert sum(text.count("key ********") for text in project.outputs) >= 2
