"""Docker Compose stacks on lab hosts with their own dockerd (and docker-compose v1).

This module builds its own small lab of two ``web+docker`` hosts (``dkdock`` in
198.18.0.192/27 unless DEPLOYKIT_DOCKER_LAB_NAME / DEPLOYKIT_DOCKER_LAB_NETWORK
say otherwise), beside the session's lab: only these tests pay for dockerd. The
example app's images are built on dock-1 (from the cached debootstrap base image)
and shipped to dock-2 without a registry. The last test tears the lab down and
checks that no docker process, overlay mount or cgroup is left.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Host, Inventory
from deploykit.runtimes.compose import ComposeRelease, ComposeSpec
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen, phased
from deploykit.tasks import compose, http
from deploykit.testing.composeapp import EXAMPLE, build_images
from deploykit.testing.lab import Lab, LabHostSpec
from deploykit.testing.load import LoadLoop

pytestmark = pytest.mark.lab
if os.geteuid() != 0:
    pytest.skip("the lab needs root", allow_module_level=True)

FLEET = [LabHostSpec("dock-1", ("web", "docker")), LabHostSpec("dock-2", ("web", "docker"))]
COMPOSE_FILE = {"docker-compose.yml": (EXAMPLE / "docker-compose.yml").read_text()}
TOKEN = Secret("tok-" + uuid.uuid4().hex)


@pytest.fixture(scope="module")
def docker_lab() -> Iterator[Lab]:
    lab = Lab(FLEET, name=os.environ.get("DEPLOYKIT_DOCKER_LAB_NAME", "dkdock"),
              network=os.environ.get("DEPLOYKIT_DOCKER_LAB_NETWORK", "198.18.0.192/27"))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def inventory(docker_lab: Lab) -> Inventory:
    return Inventory.from_dict(docker_lab.inventory(), source="<docker lab>")


@pytest.fixture(scope="module")
def conns(inventory: Inventory) -> Iterator[dict[str, Connection]]:
    opened = {s.name: Connection(inventory.host(s.name)) for s in FLEET}
    yield opened
    for conn in opened.values():
        conn.close()


@pytest.fixture(scope="module")
def images(conns: dict[str, Connection]) -> dict[str, str]:
    """The example app's images, built on dock-1: version -> image name."""
    return build_images(conns["dock-1"])


def web(inventory: Inventory) -> list[Host]:
    return [inventory.host(s.name) for s in FLEET]


def plan_for(version: str, images: dict[str, str], source: compose.ImageSource | None,
             app: str = "shop") -> ComposeSpec:
    """Blue/green of the example app at ``version``; the image name is a release var."""
    release = ComposeRelease(version, COMPOSE_FILE, (images[version],),
                             {"IMAGE": images[version]})
    return ComposeSpec(app, release, {"API_TOKEN": TOKEN},
                            source=source, health_timeout=30, grace_seconds=0.5,
                            verify_requests=20)


def failures(outcome: bluegreen.DeployOutcome) -> str:
    """The outcome's message and every failed step's message, for assertion output."""
    return "\n".join([outcome.message, *(f"{r.host} {r.task}: {r.message}"
                                         for e in outcome.report.hosts.values()
                                         for r in e.results if r.failed)])


def served(inventory: Inventory) -> set[str]:
    return {http.request(f"http://{h.address}/version").json()["version"]
            for h in web(inventory)}


def test_up_twice_recreates_nothing_and_env_file_is_private(
        conns: dict[str, Connection], images: dict[str, str]) -> None:
    conn = conns["dock-1"]
    env: dict[str, compose.EnvValue] = {"IMAGE": images["v1"], "PORT": "8101",
                                        "API_TOKEN": TOKEN}
    first = compose.up("solo", COMPOSE_FILE, env).run(conn)
    assert first.changed, first.message
    assert compose.wait_healthy("solo", ["web"], timeout=30).run(conn).ok
    before = compose.ps(conn, "solo")
    assert [(c.service, c.state, c.health) for c in before] == [("web", "running", "healthy")]

    second = compose.up("solo", COMPOSE_FILE, env).run(conn)
    assert second.status.value == "ok", second.diff
    assert [c.id for c in compose.ps(conn, "solo")] == [c.id for c in before]

    # the app got the secret, the host keeps it in a 0600 file, no output shows it
    answer = http.request(f"http://{conn.host.address}:8101/version").json()
    assert answer == {"version": "v1", "token_length": len(TOKEN)}
    mode = conn.run("stat -c '%a %U' /srv/compose/solo/.env", write=False).stdout.strip()
    assert mode == "600 root"
    shown = "\n".join([first.diff, first.message, second.diff, repr(first.to_dict()),
                       *(entry.command for entry in conn.log)])
    assert TOKEN.reveal() not in shown

    # a changed env recreates the service (and only then)
    third = compose.up("solo", COMPOSE_FILE, {**env, "API_TOKEN": Secret("other")}).run(conn)
    assert third.changed and "file .env" in third.diff
    assert [c.id for c in compose.ps(conn, "solo")] != [c.id for c in before]
    assert compose.down("solo").run(conn).changed
    assert compose.ps(conn, "solo") == []
    assert compose.down("solo").run(conn).status.value == "ok"


def test_push_image_twice_transfers_once(conns: dict[str, Connection],
                                         images: dict[str, str]) -> None:
    target = conns["dock-2"]
    target.run("docker rmi -f dkapp:v1 >/dev/null 2>&1 || true")
    task = compose.push_image(images["v1"], compose.HostDocker(conns["dock-1"]))
    first = task.run(target)
    assert first.changed, first.message
    assert task.sent["dock-2"] > 1_000_000  # the image really travelled (gzipped)
    want = compose.image_ids(conns["dock-1"], [images["v1"]])[images["v1"]]
    assert compose.image_ids(target, [images["v1"]]) == {images["v1"]: want}

    again = compose.push_image(images["v1"], compose.HostDocker(conns["dock-1"]))
    logged = len(target.log)
    second = again.run(target)
    assert second.status.value == "ok"
    assert not hasattr(again, "sent")
    assert [e.write for e in target.log[logged:]] == [False]  # one read, nothing loaded


def test_bluegreen_v1_to_v2_under_load_then_rollback(
        inventory: Inventory, conns: dict[str, Connection], images: dict[str, str]) -> None:
    source = compose.HostDocker(conns["dock-1"])
    first = bluegreen.deploy(plan_for("v1", images, source), web(inventory),
                                     deploy_id="compose-v1")
    assert first.result == "deployed", failures(first)
    assert first.color is not None  # a deployed outcome names the colour serving
    assert served(inventory) == {"v1"}

    urls = [f"http://{h.address}/version" for h in web(inventory)]
    with LoadLoop(urls) as load:
        started = time.monotonic()
        second = bluegreen.deploy(plan_for("v2", images, source), web(inventory),
                                          deploy_id="compose-v2")
        took = time.monotonic() - started
    print(f"compose blue/green deploy v1 -> v2: {took:.1f} s; load {load.stats.summary()}")
    assert second.result == "deployed", failures(second)
    assert (second.previous, second.color) == (first.color, bluegreen.other(first.color))
    assert load.stats.errors == 0, load.stats.summary()
    assert set(load.stats.versions) <= {"v1", "v2"} and load.stats.requests > 10
    assert served(inventory) == {"v2"}
    for conn in conns.values():  # after the grace period the old colour is down
        assert compose.ps(conn, f"shop-{first.color}") == []

    again = bluegreen.deploy(plan_for("v2", images, source), web(inventory),
                                     deploy_id="compose-v2-again")
    assert again.result == "unchanged", again.message

    with LoadLoop(urls) as load:
        back = bluegreen.rollback(plan_for("v2", images, None), web(inventory),
                                          deploy_id="compose-rollback")
    assert back.result == "deployed", failures(back)
    assert back.color == first.color
    assert load.stats.errors == 0, load.stats.summary()
    assert served(inventory) == {"v1"}
    running = {c.image for conn in conns.values() for c in compose.ps(conn, f"shop-{back.color}")}
    assert running == {images["v1"]}


def test_unhealthy_version_never_gets_traffic(
        inventory: Inventory, conns: dict[str, Connection], images: dict[str, str]) -> None:
    source = compose.HostDocker(conns["dock-1"])
    base = bluegreen.deploy(plan_for("v1", images, source), web(inventory),
                                    deploy_id="shop-v1")
    assert base.result in ("deployed", "unchanged"), failures(base)
    assert base.color is not None  # a deployed outcome names the colour serving
    with LoadLoop([f"http://{h.address}/version" for h in web(inventory)]) as load:
        broken = bluegreen.deploy(plan_for("v3-broken", images, source),
                                          web(inventory), deploy_id="shop-v3")
    assert broken.result == "failed", broken.message
    assert broken.color == base.color  # traffic never moved
    assert "health gate" in broken.message
    failed = [r for e in broken.report.hosts.values() for r in e.results if r.failed]
    assert failed and all("cannot reach its backend" in r.message for r in failed)
    assert "unhealthy" in failed[0].message
    assert set(load.stats.versions) == {"v1"} and load.stats.errors == 0
    # the idle colour is put back as it was: no container left
    for conn in conns.values():
        assert compose.ps(conn, f"shop-{bluegreen.other(base.color)}") == []
    assert served(inventory) == {"v1"}


def test_phased_compose_stack_stops_at_the_failing_phase(
        inventory: Inventory, conns: dict[str, Connection], images: dict[str, str]) -> None:
    stack_file = EXAMPLE / "stack" / "docker-compose.yml"
    env = {"IMAGE": images["v1"], "API_IMAGE": images["v3-broken"]}
    stack = phased.compose_stack("stack", [stack_file], env, hosts=["dock-1"],
                                 health_timeout=20,
                                 checks={"cache": phased.TcpCheck(9102, retries=3,
                                                                  interval=0.5)})
    outcome = phased.start(stack, inventory, undo="none")

    assert outcome.phases == [["db"], ["cache"], ["api"], ["gateway"]]
    assert outcome.result == "failed"
    assert (outcome.failed_phase, outcome.failed_service) == (3, "api")
    assert "cannot reach its backend" in outcome.last_output
    states = {c.service: c.health for c in compose.ps(conns["dock-1"], "stack")}
    assert states == {"db": "healthy", "cache": "healthy", "api": "unhealthy"}
    skipped = [r.task for e in outcome.report.hosts.values() for r in e.results
               if r.status.value == "skipped"]
    assert skipped == ["gateway"]

    fixed = phased.compose_stack("stack", [stack_file], {**env, "API_IMAGE": images["v2"]},
                                 hosts=["dock-1"], health_timeout=20)
    again = phased.start(fixed, inventory)
    assert again.result == "ok", again.last_output
    assert {c.service for c in compose.ps(conns["dock-1"], "stack")} == {
        "db", "cache", "api", "gateway"}
    assert compose.down("stack").run(conns["dock-1"]).changed


def _docker_pids(lab: Lab) -> list[int]:
    pids = []
    for spec in FLEET:
        out = subprocess.run(["ip", "netns", "pids", f"{lab.name}-{spec.name}"],
                             capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids


def test_lab_down_leaves_no_docker_process_mount_or_cgroup(
        docker_lab: Lab, conns: dict[str, Connection], images: dict[str, str]) -> None:
    conn = conns["dock-2"]
    compose.push_image(images["v1"], compose.HostDocker(conns["dock-1"])).run(conn)
    env: dict[str, compose.EnvValue] = {"IMAGE": images["v1"], "PORT": "8109",
                                        "API_TOKEN": TOKEN}
    assert compose.up("leftover", COMPOSE_FILE, env).run(conn).ok
    # a container off the host network too: only its cgroup finds it
    conn.run(["docker", "run", "-d", "--network", "none", images["v1"], "sleep", "600"])
    cgroups = sorted(Path("/sys/fs/cgroup").glob(f"*/{docker_lab.name}-*"))
    assert cgroups
    inside = [p for g in cgroups for f in g.rglob("cgroup.procs")
              for p in map(int, f.read_text().split())]
    pids = set(_docker_pids(docker_lab)) | set(inside)
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids
             if Path(f"/proc/{p}/comm").exists()}
    assert {"dockerd", "containerd", "containerd-shim", "python3", "sleep"} <= names, names

    anchors = [docker_lab._anchor_pid(s.name) for s in FLEET]
    spaces = {os.readlink(f"/proc/{a}/ns/mnt") for a in anchors}
    overlays = [line for a in anchors for line in Path(f"/proc/{a}/mountinfo").read_text()
                .splitlines() if " - overlay " in line]
    assert len(overlays) >= 2  # the containers' root filesystems, in the hosts' namespaces

    docker_lab.down()

    alive = [p for p in pids if Path(f"/proc/{p}").exists()
             and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]
    assert alive == []
    assert not [g for g in Path("/sys/fs/cgroup").glob(f"*/{docker_lab.name}-*")]
    left = set()  # a mount namespace held by any process (or an nsfs bind mount) is gone
    for ns in Path("/proc").glob("[0-9]*/ns/mnt"):
        try:
            left.add(os.readlink(ns))
        except OSError:
            pass
    assert not spaces & left
    root_mounts = Path("/proc/self/mountinfo").read_text()
    assert str(docker_lab.state_dir) not in root_mounts
    assert (docker_lab.state_dir.parent / "base-images").is_dir()  # the cache survives
