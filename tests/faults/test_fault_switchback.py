"""The fleet never ends split or lying (issue 21 items 3-5, issue 17 items 6-7), at the
strategy level: ``bluegreen.deploy`` over real SSH, faults injected through the hosts'
own namespaces at a known step (:class:`faultkit.StepWire`), what each host serves read
back through nginx, its colour links and its supervisor programs.

One fleet for the module, in order (each test starts from what the previous left):

1. v2 serves on blue. v4-slow (it fails the latency budget) goes to green with a new
   environment; web-2's nginx config directory fills up before verification, so its
   switch-back cannot be written: web-2 must keep serving (its green program running),
   web-1 goes back to blue, and the live environment file is untouched.
2. The next deploy of v2 converges the split fleet: every host on blue/v2 again.
3. v1 goes to green and web-2 is partitioned right after its switch: web-1 switches back;
   after the partition heals, ``repair`` puts web-2 back on its last verified release.
4. A controller killed (SIGKILL) after the switch, before verification: the same deploy
   run again verifies the release (it fails) and switches back instead of calling it live.
5. The live release redeployed with a drifted program config never restarts the serving
   program ungated: it goes through the idle colour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import Faults, StepWire

from deploykit import pg
from deploykit.artifacts import Artifact, build
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen
from deploykit.strategies.bluegreen import BlueGreen
from deploykit.tasks import http
from deploykit.testing.lab import Lab
from deploykit.testing.sample import app_env

pytestmark = pytest.mark.lab

APP = "sampleapp"
WEB = ("web-1", "web-2")
NGINX_STATE = "/etc/nginx/deploykit"  # where nginx changes are staged
SUPERVISOR = "/etc/supervisor/supervisord.conf"


@dataclass
class Fleet:
    lab: Lab
    inventory: Inventory
    web: list[Host]
    db: Host
    artifacts: dict[str, Artifact]
    env: Secret
    faults: Faults
    ssh: Callable[[str], Connection]
    count: int = 0

    def plan(self, version: str, header: str = "", database: str | None = APP) -> BlueGreen:
        env = Secret(header + self.env.reveal()) if header else self.env
        return BlueGreen(APP, self.artifacts[version], env, database=database,
                         latency_budget_ms=300.0, grace_seconds=0.5)

    def deploy(self, version: str, header: str = "", reporter: StepWire | None = None,
               database: str | None = APP) -> bluegreen.DeployOutcome:
        """Deploy ``version`` (``database=None``: no migrations, for v1 after v2)."""
        self.count += 1
        return bluegreen.deploy(self.plan(version, header, database), self.web, self.db,
                                deploy_id=f"test-sb-{self.count}-{version}", reporter=reporter)

    def sh(self, host: str, script: str) -> str:
        return self.lab.nsenter(host, ["sh", "-c", script]).stdout

    def serving(self, host: str) -> tuple[int | None, str | None]:
        """HTTP status (None: no answer) and version through the host's nginx."""
        response = http.request(f"http://{self.inventory.host(host).address}/version",
                                timeout=5.0)
        if response.status != 200:
            return response.status, None
        return 200, response.json()["version"]

    def color(self, host: str) -> str:
        return self.sh(host, f"cat /etc/nginx/deploykit/{APP}.active").strip()

    def program(self, host: str, color: str) -> str:
        out = self.lab.nsenter(host, ["supervisorctl", "-c", SUPERVISOR, "status",
                                      f"{APP}-{color}"], check=False).stdout
        return out.split()[1] if len(out.split()) > 1 else "ABSENT"

    def pid(self, host: str, color: str) -> str:
        return self.lab.nsenter(host, ["supervisorctl", "-c", SUPERVISOR, "pid",
                                       f"{APP}-{color}"], check=False).stdout.strip()

    def live_env_sha(self, host: str) -> str:
        """sha256 of the environment file the live colour's program reads."""
        color = self.color(host)
        pid = self.pid(host, color)
        script = (f'f=$(tr "\\0" "\\n" < /proc/{pid}/environ | sed -n "s/^APP_ENV_FILE=//p"); '
                  f'[ -n "$f" ] || f=/proc/{pid}/cwd/.env; sha256sum < "$f"')
        return self.sh(host, script).split()[0]

    def state(self) -> dict[str, tuple[object, ...]]:
        return {h: (self.serving(h), self.color(h), self.program(h, "blue"),
                    self.program(h, "green")) for h in WEB}


@pytest.fixture(scope="module")
def story(lab: Lab, lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
          tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Iterator[Fleet]:
    out = tmp_path_factory.mktemp("switchback-artifacts")
    artifacts = {v: build(project_root / "examples" / "app", app=APP, version=v, out_dir=out,
                          wheelhouse=project_root / ".cache" / "wheelhouse")
                 for v in ("v1", "v2", "v4-slow")}
    db = lab_inventory.host("db-1")
    lab.reset()
    with pg.connect(lab_connection("db-1")) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")
    faults = Faults(lab)
    try:
        yield Fleet(lab, lab_inventory, lab_inventory.select("web"), db, artifacts,
                    app_env(db, APP), faults, lab_connection)
    finally:
        for host in WEB:
            faults.unfill(host, NGINX_STATE)
            faults.heal(host)
        lab.reset()
        with pg.connect(lab_connection("db-1")) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")


def test_a_switch_back_that_fails_on_one_host_leaves_that_host_serving(story: Fleet) -> None:
    first = story.deploy("v2")
    assert first.result == "deployed" and first.color == "blue", first.message
    env_before = {h: story.live_env_sha(h) for h in WEB}

    wire = StepWire().before("web-2", r"^verify: latency",
                             lambda: story.faults.fill("web-2", NGINX_STATE))
    try:
        outcome = story.deploy("v4-slow", header="# a new environment\n", reporter=wire)
    finally:
        story.faults.unfill("web-2", NGINX_STATE)
    wire.assert_fired()
    assert outcome.result == "rolled_back", outcome.message
    # web-1 is back on blue/v2; web-2 could not be switched back and still serves
    # v4-slow on green: its green program must still run (never a 502)
    assert story.serving("web-1") == (200, "v2")
    assert story.serving("web-2") == (200, "v4-slow")
    assert (story.program("web-1", "blue"), story.program("web-1", "green")) == \
        ("RUNNING", "STOPPED")
    assert story.program("web-2", "green") == "RUNNING"
    # switch-back leaves the live environment exactly as it was (issue 17 item 6)
    assert story.live_env_sha("web-1") == env_before["web-1"]
    # the outcome says, per host, what serves
    assert (outcome.hosts["web-1"].color, outcome.hosts["web-1"].release) == ("blue", "v2")
    assert (outcome.hosts["web-2"].color, outcome.hosts["web-2"].release) == \
        ("green", "v4-slow")
    assert not outcome.hosts["web-2"].verified
    assert "NOT switched back: web-2: v4-slow on green" in outcome.message, outcome.message


def test_the_next_deploy_converges_a_split_fleet(story: Fleet) -> None:
    outcome = story.deploy("v2")
    assert outcome.ok, outcome.message
    for host in WEB:
        assert story.serving(host) == (200, "v2")
        assert story.color(host) == "blue"
        assert story.program(host, "green") == "STOPPED"
        assert outcome.hosts[host].verified


def test_a_host_lost_mid_switch_is_repaired_to_the_last_verified_release(
        story: Fleet) -> None:
    wire = StepWire().before("web-2", r"^verify: health",
                             lambda: story.faults.partition("web-2"))
    try:
        outcome = story.deploy("v1", reporter=wire, database=None)
    finally:
        story.faults.heal("web-2")
    assert not wire.wires, outcome.message
    assert outcome.result == "rolled_back", outcome.message
    assert story.serving("web-1") == (200, "v2")
    assert story.program("web-1", "green") == "STOPPED"
    assert not outcome.hosts["web-2"].reachable or outcome.hosts["web-2"].color == "green"
    assert story.serving("web-2") == (200, "v1")  # left on the rejected release

    repaired = bluegreen.repair(story.plan("v2"), story.web, deploy_id="test-sb-repair")
    assert repaired.ok, repaired.message
    for host in WEB:
        assert story.serving(host) == (200, "v2")
        assert story.color(host) == "blue"
        assert story.program(host, "green") == "STOPPED"
    again = story.deploy("v2")  # nothing left to converge
    assert again.result == "unchanged", again.message


CRASH = textwrap.dedent("""\
    import json, os, signal, sys
    from deploykit.artifacts import Artifact
    from deploykit.inventory import Inventory
    from deploykit.secrets import Secret
    from deploykit.strategies import bluegreen
    from deploykit.strategies.bluegreen import BlueGreen

    args = json.loads(sys.argv[1])
    inventory = Inventory.from_dict(args["inventory"], source="<lab>")

    class Crash:
        def run_started(self, *a): pass
        def step_finished(self, *a): pass
        def host_failed(self, *a): pass
        def run_finished(self, *a): pass
        def step_started(self, host, step):
            if step.startswith("verify:"):
                os.kill(os.getpid(), signal.SIGKILL)

    artifact = Artifact.from_file(args["artifact"], app="sampleapp", version=args["version"])
    plan = BlueGreen("sampleapp", artifact, Secret(args["env"]), database="sampleapp",
                     latency_budget_ms=300.0, grace_seconds=0.5)
    bluegreen.deploy(plan, inventory.select("web"), inventory.host("db-1"),
                     deploy_id="test-sb-crash", reporter=Crash())
    """)


def test_a_crash_between_switch_and_verification_is_verified_before_it_is_live(
        story: Fleet, tmp_path: Path, project_root: Path) -> None:
    args = {"inventory": story.lab.inventory(), "artifact": str(story.artifacts["v4-slow"].path),
            "version": "v4-slow", "env": story.env.reveal()}
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    done = subprocess.run([sys.executable, str(script), json.dumps(args)], timeout=600,
                          env={**os.environ, "PYTHONPATH": str(project_root)},
                          capture_output=True, text=True, check=False)
    assert done.returncode == -9, done.stderr[-2000:]
    assert {story.serving(h) for h in WEB} == {(200, "v4-slow")}  # switched, unverified

    outcome = story.deploy("v4-slow")
    assert outcome.result == "rolled_back", outcome.message
    assert "latency" in outcome.message, outcome.message
    for host in WEB:
        assert story.serving(host) == (200, "v2")
        assert story.color(host) == "blue"
        assert story.program(host, "green") == "STOPPED"
        assert (outcome.hosts[host].release, outcome.hosts[host].verified) == ("v2", True)


def test_redeploying_the_live_release_never_restarts_it_ungated(story: Fleet) -> None:
    for host in WEB:  # the serving program's config drifted (as by hand)
        story.sh(host, f"sed -i 's/^startsecs=.*/startsecs=1/' "
                       f"/etc/supervisor/conf.d/{APP}-blue.conf && "
                       f"supervisorctl -c {SUPERVISOR} reread >/dev/null")
    pids = {h: story.pid(h, "blue") for h in WEB}
    outcome = story.deploy("v2")
    assert outcome.ok, outcome.message
    for host in WEB:
        assert story.serving(host) == (200, "v2")
        # either nothing restarted, or the deploy went through the idle colour
        assert story.color(host) == "green" or story.pid(host, "blue") == pids[host], \
            f"{host}: the serving program was restarted in place, ungated"


def test_rollback_restores_the_previous_release_with_its_own_env_file(story: Fleet) -> None:
    import hashlib
    served_env = hashlib.sha256(story.env.reveal().encode()).hexdigest()
    assert {story.live_env_sha(h) for h in WEB} == {served_env}  # v2, as deployed last
    newer = story.deploy("v1", header="# v1's own environment\n", database=None)
    assert newer.result == "deployed", newer.message
    assert {story.live_env_sha(h) for h in WEB} != {served_env}

    back = bluegreen.rollback(story.plan("v1"), story.web, deploy_id="test-sb-rollback")
    assert back.result == "deployed", back.message
    for host in WEB:
        assert story.serving(host) == (200, "v2")
        assert story.live_env_sha(host) == served_env  # v2's environment, as it served
    with pytest.raises(ConfigError, match="never passed verification"):
        bluegreen.rollback(story.plan("v1"), story.web, deploy_id="test-sb-to",
                           to="v4-slow")
