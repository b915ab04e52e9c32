"""Benchmark: compose blue/green v1 -> v2 on two docker lab hosts under load, and a no-op
compose ``up``.

    .venv/bin/python bench/compose.py [--runs 3]

Brings up its own lab of two ``web+docker`` hosts (``dkcb``, 198.18.0.64/27; each runs
its own dockerd) and always tears it down. The example app's images (examples/compose)
are built on dock-1 and pushed to dock-2 by the deploy itself (``docker save | gzip``
over SSH). Each run deploys v1, then times v1 -> v2 while a load loop requests
``/version`` through nginx on both hosts, then the same deploy again (``unchanged``).
Separately: a no-op ``compose.up`` of an unchanged project (median of 5).

Results are printed and written to bench/results/compose.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.runtimes.compose import ComposeRelease, ComposeSpec
from deploykit.secrets import Secret
from deploykit.strategies import bluegreen
from deploykit.tasks import compose
from deploykit.testing.composeapp import EXAMPLE, build_images
from deploykit.testing.lab import Lab, LabHostSpec
from deploykit.testing.load import LoadLoop

HERE = Path(__file__).resolve().parent
FLEET = [LabHostSpec("dock-1", ("web", "docker")), LabHostSpec("dock-2", ("web", "docker"))]
LAB_NAME, LAB_NETWORK = "dkcb", "198.18.0.64/27"
COMPOSE_FILE = {"docker-compose.yml": (EXAMPLE / "docker-compose.yml").read_text()}
TOKEN = Secret("bench-token")


def plan_for(version: str, images: dict[str, str], source: compose.ImageSource
             ) -> ComposeSpec:
    release = ComposeRelease(version, COMPOSE_FILE, (images[version],),
                             {"IMAGE": images[version]})
    return ComposeSpec("shop", release, {"API_TOKEN": TOKEN}, source=source)


def timed_deploy(plan: ComposeSpec, inventory: Inventory, deploy_id: str, want: str
                 ) -> tuple[bluegreen.DeployOutcome, float]:
    started = time.perf_counter()
    outcome = bluegreen.deploy(plan, inventory.select("web"), deploy_id=deploy_id)
    took = time.perf_counter() - started
    if outcome.result != want:
        raise SystemExit(f"{deploy_id}: {outcome.result}, not {want}: {outcome.message}")
    return outcome, took


def one_run(inventory: Inventory, images: dict[str, str], source: compose.ImageSource,
            n: int) -> dict[str, Any]:
    """v1 (deployed or already there), then the timed v1 -> v2 under load, then v2 again,
    then back to v1 (untimed) for the next run."""
    timed_deploy(plan_for("v1", images, source), inventory, f"cb-{n}-v1",
                 "unchanged" if n > 1 else "deployed")
    urls = [f"http://{h.address}/version" for h in inventory.select("web")]
    with LoadLoop(urls) as load:
        outcome, total = timed_deploy(plan_for("v2", images, source), inventory,
                                      f"cb-{n}-v2", "deployed")
    _, noop = timed_deploy(plan_for("v2", images, source), inventory, f"cb-{n}-v2-again",
                           "unchanged")
    timed_deploy(plan_for("v1", images, source), inventory, f"cb-{n}-back", "deployed")
    return {"total": round(total, 3), "phases": {k: round(v, 3)
                                                 for k, v in outcome.phases.items()},
            "gate_seconds": round(outcome.gate_seconds, 3), "load": load.stats.summary(),
            "errors": load.stats.errors, "noop_deploy": round(noop, 3)}


def noop_up(conn: Connection, image: str, repeats: int = 5) -> list[float]:
    """Wall times of ``compose.up`` on an unchanged, running project."""
    env: dict[str, compose.EnvValue] = {"IMAGE": image, "PORT": "8199", "API_TOKEN": TOKEN}
    if compose.up("noop", COMPOSE_FILE, env).run(conn).failed:
        raise SystemExit("compose up of the no-op project failed")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = compose.up("noop", COMPOSE_FILE, env).run(conn)
        times.append(round(time.perf_counter() - started, 3))
        if result.status.value != "ok":
            raise SystemExit(f"a second compose up was not a no-op: {result.diff}")
    compose.down("noop").run(conn)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lab = Lab(FLEET, name=LAB_NAME, network=LAB_NETWORK)
    try:
        started = time.perf_counter()
        lab.up()
        lab_up = time.perf_counter() - started
        inventory = Inventory.from_dict(lab.inventory(), source="<bench docker lab>")
        build = Connection(inventory.host("dock-1"))
        images = build_images(build, {"v1": {}, "v2": {}})
        source = compose.HostDocker(build)
        runs = []
        for n in range(1, args.runs + 1):
            run = one_run(inventory, images, source, n)
            print(f"run {n}: {json.dumps(run)}", flush=True)
            runs.append(run)
        ups = noop_up(build, images["v1"])
        build.close()
    finally:
        lab.down()
    summary = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "lab_up_seconds": round(lab_up, 2),
        "deploy_v1_to_v2_median": statistics.median(r["total"] for r in runs),
        "noop_deploy_median": statistics.median(r["noop_deploy"] for r in runs),
        "noop_compose_up_median": statistics.median(ups),
        "failed_requests": sum(r["errors"] for r in runs),
        "runs": runs, "noop_compose_up": ups,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "compose.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
