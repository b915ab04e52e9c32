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

* ``changed_deps``: wall time (and deploykit's own time) of a deploy whose
  dependency set changed (the sample app with one more requirement, as
  ``v2d``) from the live v2, under the same load loop.

``--before DIR`` times another checkout's code (e.g. ``/work/main``) in the same
lab and the same session, run by run, interleaved with this checkout's runs
(each side in its own process: ``PYTHONPATH=DIR``). The lab is
``$DEPLOYKIT_LAB_NAME`` / ``$DEPLOYKIT_LAB_NETWORK`` when set.

Results are printed and written to bench/results/bluegreen.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
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
from deploykit.shell import quote  # noqa: E402
from deploykit.strategies import bluegreen  # noqa: E402
from deploykit.testing.lab import Lab, default_fleet  # noqa: E402
from deploykit.testing.load import LoadLoop  # noqa: E402
from deploykit.testing.sample import app_env  # noqa: E402

LAB_NAME = os.environ.get("DEPLOYKIT_LAB_NAME", "dkbg")
LAB_NETWORK = os.environ.get("DEPLOYKIT_LAB_NETWORK", "198.18.0.64/27")
APP = "sampleapp"
CHANGED = "v2d"  # v2 with one more requirement: a new dependency set


def env_for(db: Host) -> Secret:
    """The app's shared .env: PostgreSQL and Redis on ``db``."""
    return app_env(db, APP)


def fresh(lab: Lab, db: Host) -> None:
    """Empty hosts (no release, no program, nginx's default site) and no app database."""
    lab.reset()
    conn = Connection(db)
    try:
        allow_lab_network(conn)
        with pg.connect(conn) as database:
            database.execute(f"DROP DATABASE IF EXISTS {APP} WITH (FORCE)")
    finally:
        conn.close()


def allow_lab_network(conn: Connection) -> None:
    """PostgreSQL on the db host accepts the lab's own network (the lab allows only
    198.18.0.0/24, and a lab given another block, as $DEPLOYKIT_LAB_NETWORK may be,
    would refuse the web hosts)."""
    line = f"host all all {quote(LAB_NETWORK)} scram-sha-256"
    conn.run(f"f=$(runuser -u postgres -- psql -Atc 'show hba_file') && "
             f"{{ grep -qxF {quote(line)} \"$f\" || echo {quote(line)} >> \"$f\"; }} && "
             "runuser -u postgres -- psql -Atc 'select pg_reload_conf()' >/dev/null")


def slowest_steps(outcome: bluegreen.DeployOutcome) -> dict[str, float]:
    """Each step's duration on the host where it took longest, in run order."""
    steps: dict[str, float] = {}
    for entry in outcome.report.hosts.values():
        for r in entry.results:
            steps[r.task] = round(max(steps.get(r.task, 0.0), r.duration), 3)
    return steps


def one_run(lab: Lab, inventory: Inventory, built: dict[str, Artifact], n: int) -> dict[str, Any]:
    """v1 fresh, then the timed v1 -> v2 under load, v2 again, and v2 -> v2d (new deps)."""
    web, db = inventory.select("web"), inventory.host("db-1")
    fresh(lab, db)
    env = env_for(db)
    urls = [f"http://{h.address}/version" for h in web]

    def deploy(version: str, label: str) -> tuple[bluegreen.DeployOutcome, float]:
        plan = bluegreen.BlueGreen(APP, built[version], env, database=APP)
        started = time.perf_counter()
        outcome = bluegreen.deploy(plan, web, db, deploy_id=f"bench-bg-{n}-{label}")
        return outcome, time.perf_counter() - started

    first, first_total = deploy("v1", "v1")
    if first.result != "deployed":
        raise SystemExit(f"v1 did not deploy: {first.message}")
    with LoadLoop(urls) as load:
        outcome, total = deploy("v2", "v2")
    if outcome.result != "deployed":
        raise SystemExit(f"v1 -> v2 did not deploy: {outcome.message}")
    again, noop = deploy("v2", "v2-again")
    if again.result != "unchanged":
        raise SystemExit(f"v2 again was not a no-op: {again.result}: {again.message}")
    with LoadLoop(urls) as changed_load:
        changed, changed_total = deploy(CHANGED, CHANGED)
    if changed.result != "deployed":
        raise SystemExit(f"v2 -> {CHANGED} did not deploy: {changed.message}")
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
        "changed_deps": round(changed_total, 3),
        "changed_deps_deploykit": round(changed_total - changed.gate_seconds - grace, 3),
        "changed_deps_steps": slowest_steps(changed),
        "changed_deps_load": changed_load.stats.summary(),
    }


def build_all(out: str) -> dict[str, Artifact]:
    """v1, v2, and v2d (v2 with one more requirement) from the sample app."""
    wheelhouse = ROOT / ".cache" / "wheelhouse"
    built = {v: artifacts.build(ROOT / "examples" / "app", app=APP, version=v, out_dir=out,
                                wheelhouse=wheelhouse) for v in ("v1", "v2")}
    source = Path(out) / "changed-app"
    shutil.copytree(ROOT / "examples" / "app", source)
    shutil.copy(source / "versions" / "v2.toml", source / "versions" / f"{CHANGED}.toml")
    with (source / "requirements.txt").open("a") as f:
        f.write("itsdangerous>=2\n")
    built[CHANGED] = artifacts.build(source, app=APP, version=CHANGED, out_dir=out,
                                     wheelhouse=wheelhouse)
    return built


KEYS = ("fresh_v1", "total", "gate_seconds", "deploykit", "noop", "changed_deps",
        "changed_deps_deploykit")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and load totals of some runs."""
    return {
        "median": {key: round(float(statistics.median(r[key] for r in runs)), 3)
                   for key in KEYS},
        "load_total": {"requests": sum(r["load"]["requests"] + r["changed_deps_load"]["requests"]
                                       for r in runs),
                       "errors": sum(r["load"]["errors"] + r["changed_deps_load"]["errors"]
                                     for r in runs)},
    }


def run_other(code: str, n: int) -> dict[str, Any]:
    """Run number ``n`` with another checkout's deploykit (its own process, same lab)."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one-run", str(n)],
        env={**os.environ, "PYTHONPATH": code}, capture_output=True, text=True, check=False,
        timeout=1800)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the run with {code} failed:\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    """Build the artifacts and the lab, run, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", metavar="DIR",
                        help="also time this checkout's deploykit (e.g. /work/main)")
    parser.add_argument("--one-run", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lab = Lab(default_fleet(), name=LAB_NAME, network=LAB_NETWORK)
    with tempfile.TemporaryDirectory(prefix="bench-bluegreen-") as out:
        built = build_all(out)
        if args.one_run is not None:  # a child of --before: the lab is up, and stays
            inventory = Inventory.from_dict(lab.inventory(), source="<bench lab>")
            print(json.dumps(one_run(lab, inventory, built, args.one_run)), flush=True)
            return
        runs: list[dict[str, Any]] = []
        before: list[dict[str, Any]] = []
        loads: list[str] = []
        try:
            lab.up()
            inventory = Inventory.from_dict(lab.inventory(), source="<bench lab>")
            for n in range(1, args.runs + 1):
                if args.before:
                    before.append(run_other(args.before, n))
                    print(f"before {n}: {json.dumps(before[-1])}", flush=True)
                loads.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
                runs.append(one_run(lab, inventory, built, n))
                print(f"run {n}: {json.dumps(runs[-1])}", flush=True)
            fresh(lab, inventory.host("db-1"))
        finally:
            lab.down()

    results = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "hosts": "web-1, web-2 (nginx, supervisor, gunicorn), db-1 (PostgreSQL 15, Redis)",
        "runs": args.runs,
        "load_average": loads,
        **summary(runs),
        "before": ({"code": args.before, **summary(before), "per_run": before}
                   if before else None),
        "per_run": runs,
    }
    path = HERE / "results" / "bluegreen.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    shown = {k: results[k] for k in ("median", "load_total", "load_average")}
    if before:
        shown["before"] = summary(before)
    print(json.dumps(shown, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
