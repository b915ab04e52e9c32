"""Benchmark: a blue/green deploy of the sample app, v1 -> v2 on two web hosts, under load.

    .venv/bin/python bench/bluegreen.py [--runs 3]

Brings up its own lab (``dkbg``, 198.18.0.64/27: web-1, web-2, db-1) and always
tears it down. Each run starts from empty hosts and an empty database, deploys
v1 (fresh), then times the v1 -> v2 deploy while a load loop (4 threads, paced,
a new connection per request, 5 s timeout each) requests ``/version`` through
nginx on both web hosts, and finally the same deploy again (a no-op).

Figures per run (the medians across runs are the summary):

* ``total``: wall time of ``bluegreen.deploy`` v1 -> v2;
* ``phases``: each phase's wall time (inspect, database, prepare, switch, finish,
  stop old colour), and ``steps``: each step's time on its slowest host;
* ``waits``: the part of those spent in health gates and verification
  (``DeployOutcome.waits``; ``gate_seconds`` is their sum), and ``grace``: the
  deliberate pause before the old colour is stopped;
* ``deploykit``: ``total - gate_seconds - grace``, the time deploykit itself
  takes (SSH, probes, uploads, installs, supervisor and nginx work);
* ``load``: requests, errors (5xx and connection errors), statuses and versions
  seen during the deploy;
* ``noop``: wall time of the same deploy again (outcome ``unchanged``).

Results are printed and written to bench/results/bluegreen.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


from deploykit import artifacts, pg  # noqa: E402
from deploykit.artifacts import Artifact  # noqa: E402
from deploykit.connection import Connection  # noqa: E402
from deploykit.inventory import Host, Inventory  # noqa: E402
from deploykit.secrets import Secret  # noqa: E402
from deploykit.strategies import bluegreen  # noqa: E402
from deploykit.testing.lab import Lab, default_fleet  # noqa: E402
from deploykit.testing.load import LoadLoop  # noqa: E402
from deploykit.testing.sample import app_env  # noqa: E402

LAB_NAME, LAB_NETWORK = "dkbg", "198.18.0.64/27"
APP = "sampleapp"


def env_for(db: Host) -> Secret:
    """The app's shared .env: PostgreSQL and Redis on ``db``."""
    return app_env(db, APP)


def fresh(lab: Lab, db: Host) -> None:
    """Empty hosts (no release, no program, nginx's default site) and no app database."""
    lab.reset()
    conn = Connection(db)
    try:
        with pg.connect(conn) as database:
            database.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")
    finally:
        conn.close()


def slowest_steps(outcome: bluegreen.DeployOutcome) -> dict[str, float]:
    """Each step's duration on the host where it took longest, in run order."""
    steps: dict[str, float] = {}
    for entry in outcome.report.hosts.values():
        for r in entry.results:
            steps[r.task] = round(max(steps.get(r.task, 0.0), r.duration), 3)
    return steps


def one_run(lab: Lab, inventory: Inventory, built: dict[str, Artifact], n: int) -> dict[str, Any]:
    """v1 fresh, then the timed v1 -> v2 under load, then v2 again."""
    web, db = inventory.select("web"), inventory.host("db-1")
    fresh(lab, db)
    env = env_for(db)

    def deploy(version: str, label: str) -> tuple[bluegreen.DeployOutcome, float]:
        plan = bluegreen.BlueGreen(APP, built[version], env, database=APP)
        started = time.perf_counter()
        outcome = bluegreen.deploy(plan, web, db, deploy_id=f"bench-bg-{n}-{label}")
        return outcome, time.perf_counter() - started

    first, first_total = deploy("v1", "v1")
    if first.result != "deployed":
        raise SystemExit(f"v1 did not deploy: {first.message}")
    with LoadLoop([f"http://{h.address}/version" for h in web]) as load:
        outcome, total = deploy("v2", "v2")
    if outcome.result != "deployed":
        raise SystemExit(f"v1 -> v2 did not deploy: {outcome.message}")
    again, noop = deploy("v2", "v2-again")
    if again.result != "unchanged":
        raise SystemExit(f"v2 again was not a no-op: {again.result}: {again.message}")
    grace = bluegreen.BlueGreen(APP, built["v2"], env).grace_seconds
    return {
        "fresh_v1": round(first_total, 3),
        "total": round(total, 3),
        "phases": {k: round(v, 3) for k, v in outcome.phases.items()},
        "steps": slowest_steps(outcome),
        "waits": {k: round(v, 3) for k, v in outcome.waits.items()},
        "gate_seconds": round(outcome.gate_seconds, 3),
        "grace": grace,
        "deploykit": round(total - outcome.gate_seconds - grace, 3),
        "load": load.stats.summary(),
        "noop": round(noop, 3),
    }


def main() -> None:
    """Build the artifacts and the lab, run, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bluegreen-") as out:
        built = {v: artifacts.build(ROOT / "examples" / "app", app=APP, version=v, out_dir=out,
                                    wheelhouse=ROOT / ".cache" / "wheelhouse")
                 for v in ("v1", "v2")}
        lab = Lab(default_fleet(), name=LAB_NAME, network=LAB_NETWORK)
        try:
            lab.up()
            inventory = Inventory.from_dict(lab.inventory(), source="<bench lab>")
            runs = []
            for n in range(1, args.runs + 1):
                run = one_run(lab, inventory, built, n)
                print(f"run {n}: {json.dumps(run)}", flush=True)
                runs.append(run)
            fresh(lab, inventory.host("db-1"))
        finally:
            lab.down()

    def median(key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs)), 3)

    results = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "hosts": "web-1, web-2 (nginx, supervisor, gunicorn), db-1 (PostgreSQL 15, Redis)",
        "runs": args.runs,
        "median": {key: median(key) for key in ("fresh_v1", "total", "gate_seconds",
                                                "deploykit", "noop")},
        "load_total": {"requests": sum(r["load"]["requests"] for r in runs),
                       "errors": sum(r["load"]["errors"] for r in runs)},
        "per_run": runs,
    }
    path = HERE / "results" / "bluegreen.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("median", "load_total")}, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
