"""Benchmark: bench/noop.py's workload on 10, 50, 100 and 200 light lab hosts,
deploykit and pyinfra side by side.

    .venv/bin/python bench/scale.py [--sizes 10,50,100,200] [--runs 1] [--no-pyinfra]
                                    [--network 198.18.17.0/24]

Brings up its own lab ``dkscb`` of light hosts (sshd and a shell only) as large
as the largest size, reports the memory it takes, then per size and tool runs
the workload cold (after /srv/bench is removed on those hosts) and again as a
no-op, each as a whole new process: wall time, the process's CPU time (user +
system, its children included), its peak RSS and how many hosts failed or went
unreported. deploykit's pool is as wide as pyinfra's ``--parallel`` (the host
count). pyinfra runs from its own venv (bench/setup_pyinfra.sh). Results go to
bench/results/scale.json; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from deploykit.testing.lab import Lab, LabHostSpec, light_fleet  # noqa: E402

LAB_NAME = "dkscb"
DEFAULT_NETWORK = "198.18.17.0/24"
TIMEOUT = 900.0


@dataclass
class Measure:
    """One process: wall seconds, CPU seconds, peak RSS (MB), hosts failed."""

    wall: float
    cpu: float
    rss_mb: float
    failed: int


def measured(argv: list[str], env: dict[str, str] | None = None,
             cwd: Path | None = None) -> tuple[Measure, str, int]:
    """Run ``argv``; its wall time and, from wait4, its own CPU and peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()  # until the process closes it (bounded by the tools' timeouts)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (Measure(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, 0),
            out, proc.returncode)


def deploykit_run(inventory: Path, hosts: list[str]) -> Measure:
    """One deploykit process over ``hosts``."""
    m, out, rc = measured([sys.executable, str(HERE / "scale_worker.py"), str(inventory),
                           ",".join(hosts), str(len(hosts))])
    try:
        result = json.loads(out.strip().splitlines()[-1])
        m.failed = len(result["failed"]) + result["hosts"] - result["reported"]
    except (ValueError, IndexError, KeyError):
        print(f"deploykit run failed (exit {rc}):\n{out[-3000:]}", file=sys.stderr)
        m.failed = len(hosts)
    return m


def pyinfra_run(lab: Lab, hosts: list[str], work: Path) -> Measure:
    """One pyinfra process over ``hosts`` (inventory as bench/pyinfra_side.py writes it)."""
    from pyinfra_side import DEPLOY_FILE, PYINFRA, _inventory_source

    work.mkdir(parents=True, exist_ok=True)
    empty = work / "ssh_config.empty"
    empty.write_text("")
    inventory = work / "pyinfra_inventory.py"
    inventory.write_text(_inventory_source([(h, lab.address(h)) for h in hosts],
                                           str(lab.identity_file), str(lab.known_hosts),
                                           str(empty)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINFRA_")}
    env["PYINFRA_PROGRESS"] = "off"
    env.pop("PYTHONPATH", None)
    m, out, rc = measured([str(PYINFRA), "-y", "--json", "--parallel", str(len(hosts)),
                           str(inventory), str(DEPLOY_FILE)], env=env, cwd=work)
    try:
        start = out.index('{"')
        results = json.loads(out[start:out.rindex("}") + 1])["results"]
        m.failed = len(results["failed_hosts"])
    except (ValueError, KeyError, TypeError):
        print(f"pyinfra printed no JSON results (exit {rc}):\n{out[-3000:]}", file=sys.stderr)
        m.failed = len(hosts)
    return m


def lab_memory_mb(lab: Lab) -> float:
    """Proportional set size of every process in the lab's hosts (MB)."""
    total_kb = 0
    for spec in lab.specs:
        pids = subprocess.run(["ip", "netns", "pids", f"{lab.name}-{spec.name}"],
                              capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total_kb += int(line.split()[1])
            except OSError:
                pass
    return total_kb / 1024


def mem_available_mb() -> float:
    """MemAvailable from /proc/meminfo (MB)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wipe(lab: Lab, hosts: list[str]) -> None:
    """Remove /srv/bench on ``hosts`` (in parallel, through the lab, not over SSH)."""
    wanted = set(hosts)

    def one(spec: LabHostSpec) -> None:
        if spec.name in wanted:
            lab.nsenter(spec.name, ["rm", "-rf", "/srv/bench"])

    lab.each_host(one)


def median(measures: list[Measure]) -> Measure:
    """The field-wise median of several runs (failures: the worst run's)."""
    return Measure(statistics.median(m.wall for m in measures),
                   statistics.median(m.cpu for m in measures),
                   statistics.median(m.rss_mb for m in measures),
                   max(m.failed for m in measures))


def main() -> int:
    """Bring the lab up, measure every size and tool, print and write the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100,200")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-pyinfra", action="store_true")
    parser.add_argument("--network", default=DEFAULT_NETWORK)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    tools = ["deploykit"] + ([] if args.no_pyinfra else ["pyinfra"])

    lab = Lab(light_fleet(max(sizes)), name=LAB_NAME, network=args.network,
              inventory_path=HERE / "results" / "lab-scale.yml.tmp")
    rows: list[dict[str, object]] = []
    memory: dict[str, float] = {}
    before = mem_available_mb()
    try:
        started = time.perf_counter()
        lab.up()
        up_seconds = time.perf_counter() - started
        memory = {"hosts": len(lab.specs), "up_seconds": round(up_seconds, 1),
                  "pss_mb": round(lab_memory_mb(lab), 1),
                  "mem_available_drop_mb": round(before - mem_available_mb(), 1)}
        print(f"lab {LAB_NAME}: {len(lab.specs)} light hosts up in {up_seconds:.1f} s; "
              f"their processes' PSS {memory['pss_mb']} MB, MemAvailable dropped by "
              f"{memory['mem_available_drop_mb']} MB", flush=True)
        assert lab.inventory_path is not None
        names = [s.name for s in lab.specs]
        for size in sizes:
            hosts = names[:size]
            for tool in tools:
                def run(hosts: list[str] = hosts, tool: str = tool) -> Measure:
                    if tool == "deploykit":
                        assert lab.inventory_path is not None
                        return deploykit_run(lab.inventory_path, hosts)
                    return pyinfra_run(lab, hosts, HERE / "results" / "pyinfra-scale.tmp")

                for kind in ("cold", "noop"):
                    measures = []
                    for _ in range(args.runs):
                        if kind == "cold":
                            wipe(lab, hosts)
                        measures.append(run())
                    m = median(measures)
                    load = os.getloadavg()[0]
                    row = {"hosts": size, "tool": tool, "run": kind, **asdict(m),
                           "load1": round(load, 2)}
                    rows.append(row)
                    print(f"{size:>4} hosts {tool:>9} {kind:>5}: {m.wall:7.2f} s wall "
                          f"{m.cpu:7.2f} s cpu {m.rss_mb:7.1f} MB rss {m.failed:>3} failed "
                          f"(load {load:.2f})", flush=True)
    finally:
        lab.down()

    print(f"\n{'hosts':>5} {'tool':>9} {'run':>5} {'wall s':>8} {'cpu s':>8} {'rss MB':>8} "
          f"{'failed':>6} {'load1':>6}")
    for r in rows:
        print(f"{r['hosts']:>5} {r['tool']:>9} {r['run']:>5} {r['wall']:8.2f} {r['cpu']:8.2f} "
              f"{r['rss_mb']:8.1f} {r['failed']:>6} {r['load1']:>6}")
    out = HERE / "results" / "scale.json"
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": args.runs,
                               "lab": memory, "results": rows}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
