"""Soak: N consecutive blue/green deploys, alternating v1/v2, under load, on one lab.

    DEPLOYKIT_LAB_NAME=dkh DEPLOYKIT_LAB_NETWORK=198.18.0.32/27 \\
        .venv/bin/python bench/soak.py [--deploys 50] [--warmup 5]

Takes its lab from ``DEPLOYKIT_LAB_NAME``/``DEPLOYKIT_LAB_NETWORK`` (required: a
soak never borrows another lab), brings it up, and always tears it down. Starts
from empty hosts and no database (``bench/bluegreen.py``'s :func:`fresh`), deploys
v2 fresh (schema 0002; not counted), then v1, v2, v1, ... through
:func:`bluegreen.deploy` (v1's deploys skip the database phase: the schema only
moves forward, and v1 runs on it), while one bounded
:class:`LoadLoop` requests ``/version`` through nginx on every web host for the
whole soak. Reports:

* ``deploys``: how many returned ``deployed`` (and the failures' messages);
* ``traffic``: requests, failed requests (5xx and connection errors) over the soak;
* ``deploy_seconds``: p50, p95 and max of each deploy's wall time;
* ``rss``: the controller's resident memory (``VmRSS``) after the warm-up deploys
  and at the end, and the growth in percent;
* ``hosts``: per host, processes and established TCP connections (sshd sessions
  among them) after the fresh v1 deploy and after the last deploy, and what is new
  (with an even ``--deploys`` the fleet ends as it started: v2 on blue).

Results are printed and written to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bluegreen import APP, env_for, fresh  # noqa: E402  (bench/bluegreen.py)

from deploykit import artifacts  # noqa: E402
from deploykit.connection import Connection  # noqa: E402
from deploykit.inventory import Inventory  # noqa: E402
from deploykit.strategies import bluegreen  # noqa: E402
from deploykit.tasks.http import percentile  # noqa: E402
from deploykit.testing.lab import Lab, default_fleet  # noqa: E402
from deploykit.testing.load import LoadLoop  # noqa: E402

# one line per process of the lab host (its network namespace: lab hosts share the
# machine's PID namespace), not this shell nor its children, then one per established TCP
# connection (ss is per network namespace)
SNAPSHOT = r"""
me=$(stat -L -c %i /proc/$$/ns/net)
pids=$(stat -L -c '%n %i' /proc/[0-9]*/ns/net 2>/dev/null |
       awk -v me="$me" '$2 == me { split($1, p, "/"); print p[3] }' | paste -sd, -)
ps -o pid=,ppid=,comm=,args= -p "$pids" | awk -v me=$$ '$1 != me && $2 != me'
echo '--'
ss -Htn state established
"""


def rss_kib() -> int:
    """The controller's resident set size now (``VmRSS`` in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def host_snapshot(inventory: Inventory) -> dict[str, dict[str, list[str]]]:
    """Per host: its processes (``comm args``) and established TCP connections (local ->
    peer), read over a fresh connection that is closed before returning."""
    snap = {}
    for host in inventory.hosts.values():
        conn = Connection(host)
        try:
            out = conn.run(SNAPSHOT, write=False).stdout
        finally:
            conn.close()
        procs, _, conns = out.partition("--\n")
        snap[host.name] = {
            "processes": sorted(" ".join(line.split()[2:]) for line in procs.splitlines()
                                if line.strip()),
            # local address:port -> peer address (a client's port changes every time)
            "tcp": sorted(f"{line.split()[-2]} -> {line.split()[-1].rsplit(':', 1)[0]}"
                          for line in conns.splitlines() if line.strip()),
        }
    return snap


def leftovers(before: dict[str, dict[str, list[str]]], after: dict[str, dict[str, list[str]]],
              ) -> dict[str, Any]:
    """What each host has after the soak that it did not have before, ignoring the
    snapshot's own SSH session (one sshd session process and one connection)."""
    out: dict[str, Any] = {}
    for name in before:
        entry: dict[str, Any] = {}
        for key in ("processes", "tcp"):
            old, new = list(before[name][key]), list(after[name][key])
            extra = []
            for item in new:
                if item in old:
                    old.remove(item)
                else:
                    extra.append(item)
            entry[key] = {"before": len(before[name][key]), "after": len(after[name][key]),
                          "new": extra, "gone": old}
        entry["sshd_sessions"] = {
            "before": sum(p.startswith("sshd") for p in before[name]["processes"]),
            "after": sum(p.startswith("sshd") for p in after[name]["processes"])}
        out[name] = entry
    return out


def lab_from_env() -> Lab:
    """The lab named by DEPLOYKIT_LAB_NAME/DEPLOYKIT_LAB_NETWORK (both required)."""
    name, network = os.environ.get("DEPLOYKIT_LAB_NAME"), os.environ.get("DEPLOYKIT_LAB_NETWORK")
    if not name or not network:
        raise SystemExit("set DEPLOYKIT_LAB_NAME and DEPLOYKIT_LAB_NETWORK to the lab to use")
    return Lab(default_fleet(), name=name, network=network)


def soak(lab: Lab, inventory: Inventory, built: dict[str, artifacts.Artifact], deploys: int,
         warmup: int) -> dict[str, Any]:
    """Run the deploys under load; return the figures."""
    web, db = inventory.select("web"), inventory.host("db-1")
    fresh(lab, db)
    env = env_for(db)
    times: list[float] = []
    failures: list[str] = []
    rss: dict[str, int] = {"start": rss_kib()}
    urls = [f"http://{h.address}/version" for h in web]
    # the loop runs from the first switch on (before v1 serves, nginx has no app)
    started = time.perf_counter()
    first = bluegreen.deploy(bluegreen.BlueGreen(APP, built["v2"], env, database=APP),
                             web, db, deploy_id="soak-0-v2")
    first_seconds = time.perf_counter() - started
    if first.result != "deployed":
        raise SystemExit(f"the first deploy (v2) failed: {first.message}")
    # v2 serving on blue, schema at 0002: the state an even number of deploys comes back to
    before = host_snapshot(inventory)
    with LoadLoop(urls, max_requests=10**7, max_seconds=60.0 * 60) as load:
        for n in range(1, deploys + 1):
            version = "v1" if n % 2 else "v2"
            # the schema only moves forward (expand/contract): v1 runs on schema 0002 (a
            # nullable column it ignores), so its deploys skip the database phase; v2's
            # run it (backup, migrations already applied: a no-op)
            plan = bluegreen.BlueGreen(APP, built[version], env,
                                       database=APP if version == "v2" else None)
            started = time.perf_counter()
            outcome = bluegreen.deploy(plan, web, db, deploy_id=f"soak-{n}-{version}")
            elapsed = time.perf_counter() - started
            times.append(elapsed)
            if outcome.result != "deployed":
                failures.append(f"deploy {n} ({version}): {outcome.result}: {outcome.message}")
            if n == warmup:
                rss["after_warmup"] = rss_kib()
            print(f"deploy {n}/{deploys} {version}: {outcome.result} in {elapsed:.1f} s; "
                  f"requests {load.stats.requests}, errors {load.stats.errors}; "
                  f"rss {rss_kib()} KiB", flush=True)
    rss["end"] = rss_kib()
    after = host_snapshot(inventory)
    base = rss.get("after_warmup", rss["start"])
    ordered = sorted(times)
    return {
        "deploys": {"run": deploys, "succeeded": deploys - len(failures), "failures": failures,
                    "fresh_v2_seconds_not_counted": round(first_seconds, 3)},
        "traffic": {**load.stats.summary(), "failed_requests": load.stats.errors},
        "deploy_seconds": {"p50": round(statistics.median(times), 3),
                           "p95": round(percentile(ordered, 95) or 0.0, 3),
                           "max": round(max(times), 3), "each": [round(t, 3) for t in times]},
        "rss": {**rss, "unit": "KiB", "warmup_deploys": warmup,
                "growth_after_warmup_percent": round(100.0 * (rss["end"] - base) / base, 2)},
        "hosts": leftovers(before, after),
    }


def main() -> None:
    """Build v1 and v2, bring the lab up, soak, write the results, tear the lab down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.deploys < 1 or not 0 < args.warmup < args.deploys:
        raise SystemExit("need --deploys >= 1 and 0 < --warmup < --deploys")
    lab = lab_from_env()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as out:
        built = {v: artifacts.build(ROOT / "examples" / "app", app=APP, version=v, out_dir=out,
                                    wheelhouse=ROOT / ".cache" / "wheelhouse")
                 for v in ("v1", "v2")}
        try:
            lab.up()
            inventory = Inventory.from_dict(lab.inventory(), source="<soak lab>")
            figures = soak(lab, inventory, built, args.deploys, args.warmup)
            fresh(lab, inventory.host("db-1"))
        finally:
            lab.down()
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "lab": f"{lab.name} {lab.network}: web-1, web-2 (nginx, supervisor, gunicorn), "
               "db-1 (PostgreSQL 15, Redis)",
        **figures,
    }
    path = HERE / "results" / "soak.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    summary = {k: v for k, v in results.items() if k in ("deploys", "traffic", "rss")}
    summary["deploy_seconds"] = {k: v for k, v in results["deploy_seconds"].items()
                                 if k != "each"}
    print(json.dumps(summary, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
