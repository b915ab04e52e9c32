"""Benchmark: the same workload applied by deploykit and by pyinfra, cold and no-op.

    .venv/bin/python bench/noop.py [--runs 5] [--no-pyinfra] [--keep-lab]

Workload per host (bench/workload.py): 5 directories, 20 files, 1 template,
1 line_in_file. Brings up its own 10-host lab (``dkb``, 198.18.0.224/27, or
``DEPLOYKIT_LAB_NAME`` / ``DEPLOYKIT_LAB_NETWORK``; ``--keep-lab`` leaves it up), and
measures for 1 and for 10 hosts: a cold run (after /srv/bench is removed) and a
no-op run (nothing to change), each as a whole new process, median of N.
pyinfra runs from its own venv (bench/setup_pyinfra.sh), never a dependency of
deploykit. Results are printed and written to bench/results/noop.json.

Both sides are byte-compiled first (``python -m compileall``: the machine sets
PYTHONDONTWRITEBYTECODE, and an uncompiled side pays its imports' compilation on
every run). The load average is printed beside the figures.

Targets on the 2-core machine (issue 18): no-op 1 host <= 0.3 s, 10 hosts <= 0.5 s;
cold 10 hosts <= 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from deploykit.testing.lab import Lab, default_fleet  # noqa: E402

LAB_NAME = os.environ.get("DEPLOYKIT_LAB_NAME", "dkb")
LAB_NETWORK = os.environ.get("DEPLOYKIT_LAB_NETWORK", "198.18.0.224/27")
PYINFRA_PYTHON = HERE / ".venv-pyinfra" / "bin" / "python"


def compile_both_sides() -> None:
    """Byte-compile deploykit, its venv and pyinfra's venv (quietly, once)."""
    for python, where in ((Path(sys.executable), [ROOT / "deploykit", HERE]),
                          (PYINFRA_PYTHON, [])):
        if not python.exists():
            continue
        site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run([str(python), "-m", "compileall", "-q", *map(str, where), site],
                       capture_output=True, check=False)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as uptime shows them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def median_time(runs: int, before: Callable[[], None], measure: Callable[[], float]) -> float:
    """Median wall time of ``runs`` measurements, calling ``before`` ahead of each."""
    times = []
    for _ in range(runs):
        before()
        times.append(measure())
    return statistics.median(times)


def deploykit_run(inventory: Path, selector: str) -> float:
    """Wall seconds of one deploykit process applying the workload."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "noop_worker.py"), str(inventory), selector],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"deploykit run failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> int:
    """Run the benchmark and print a table of medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-pyinfra", action="store_true")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    compile_both_sides()

    lab = Lab(default_fleet(10), name=LAB_NAME, network=LAB_NETWORK,
              inventory_path=HERE / "results" / "lab-bench.yml.tmp")
    results: dict[str, dict[str, float]] = {}
    loads: dict[str, str] = {}
    try:
        lab.up()
        assert lab.inventory_path is not None
        names = [s.name for s in lab.specs]
        scenarios = {1: names[:1], 10: names}

        def wipe(hosts: list[str]) -> Callable[[], None]:
            def run() -> None:
                for h in hosts:
                    lab.nsenter(h, ["rm", "-rf", "/srv/bench"])
            return run

        for count, hosts in scenarios.items():
            selector = ",".join(hosts)
            dk = results.setdefault(f"deploykit {count} host(s)", {})
            def dk_run(sel: str = selector) -> float:
                assert lab.inventory_path is not None
                return deploykit_run(lab.inventory_path, sel)

            dk["cold"] = median_time(args.runs, wipe(hosts), dk_run)
            dk["noop"] = median_time(args.runs, lambda: None, dk_run)
            loads[f"deploykit {count} host(s)"] = load_average()
            if not args.no_pyinfra:
                from pyinfra_side import run_pyinfra

                pairs = [(h, lab.address(h)) for h in hosts]
                work = HERE / "results" / "pyinfra.tmp"
                work.mkdir(exist_ok=True)

                def py(pairs: list[tuple[str, str]] = pairs, work: Path = work) -> float:
                    return run_pyinfra(pairs, str(lab.identity_file), str(lab.known_hosts),
                                       workdir=work)
                pi = results.setdefault(f"pyinfra {count} host(s)", {})
                pi["cold"] = median_time(args.runs, wipe(hosts), py)
                pi["noop"] = median_time(args.runs, lambda: None, py)
                loads[f"pyinfra {count} host(s)"] = load_average()
    finally:
        if not args.keep_lab:
            lab.down()

    print(f"\nmedian wall seconds of {args.runs} runs, whole process, "
          f"{platform.node()} ({platform.processor() or platform.machine()})")
    print(f"{'':26} {'cold':>8} {'no-op':>8}   load average after")
    for label, t in results.items():
        print(f"{label:26} {t['cold']:8.3f} {t['noop']:8.3f}   {loads[label]}")
    if not args.no_pyinfra:
        for count in (1, 10):
            dk, pi = results[f"deploykit {count} host(s)"], results[f"pyinfra {count} host(s)"]
            print(f"pyinfra / deploykit, {count:>2} host(s): cold {pi['cold'] / dk['cold']:.1f}x, "
                  f"no-op {pi['noop'] / dk['noop']:.1f}x")
    out = HERE / "results" / "noop.json"
    out.write_text(json.dumps({"runs": args.runs, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "load_average": loads, "results": results}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
