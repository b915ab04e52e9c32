"""Benchmark: upload one artifact to 2 lab hosts, deploykit's ``Connection.put`` vs ``scp``.

    .venv/bin/python bench/upload.py [--size-mb 256] [--runs 3] [--keep]

Brings up (or reuses) a 2-host lab named by ``DEPLOYKIT_LAB_NAME`` /
``DEPLOYKIT_LAB_NETWORK`` (default ``dkconn``, 198.18.4.0/27), writes a random
artifact of ``--size-mb`` MiB, and measures, median of ``--runs``:

* deploykit: one Connection per host (connected beforehand, as in a deploy), both
  ``put(Path)`` at once in two threads: the SHA-256 of the file, the streamed upload,
  the check on the host and the atomic ``mv``;
* scp: two ``scp`` processes at once (OpenSSH, the lab's ssh_config, strict host keys).

Target (issue 21 item 7): deploykit within 2x of scp. Prints the load average beside the
figures and writes bench/results/upload.json. Takes the lab down at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from deploykit.connection import Connection  # noqa: E402
from deploykit.inventory import Inventory  # noqa: E402
from deploykit.testing.lab import Lab, parse_fleet  # noqa: E402

HOSTS = ("web-1", "web-2")
TARGET = "/srv/bench-upload/artifact.tar.gz"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _artifact(directory: Path, size_mb: int) -> Path:
    path = directory / "artifact.tar.gz"
    with path.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    return path


def _deploykit(conns: list[Connection], artifact: Path) -> float:
    errors: list[BaseException] = []

    def one(conn: Connection) -> None:
        try:
            conn.put(artifact, TARGET, mode=0o600, skip_identical=False)
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"deploykit upload failed: {errors[0]}")
    return elapsed


def _scp(lab: Lab, artifact: Path) -> float:
    started = time.perf_counter()
    procs = [subprocess.Popen(["scp", "-q", "-F", str(lab.ssh_config), str(artifact),
                               f"{name}:{TARGET}"]) for name in HOSTS]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"scp failed: exit codes {codes}")
    return elapsed


def main() -> int:
    """Run the benchmark and print medians, their ratio and the load average."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    lab = Lab(parse_fleet(",".join(f"{h}:" for h in HOSTS)),
              name=os.environ.get("DEPLOYKIT_LAB_NAME", "dkconn"),
              network=os.environ.get("DEPLOYKIT_LAB_NETWORK", "198.18.4.0/27"))
    lab.up()
    inventory = Inventory.from_dict(lab.inventory(), source="<bench lab>")
    conns = [Connection(inventory.host(h)).open() for h in HOSTS]
    try:
        for conn in conns:
            conn.run(["mkdir", "-p", str(Path(TARGET).parent)])
        with tempfile.TemporaryDirectory(prefix="dk-bench-upload-") as tmp:
            artifact = _artifact(Path(tmp), args.size_mb)
            times: dict[str, list[float]] = {"deploykit": [], "scp": []}
            loads = []
            for _ in range(args.runs):
                loads.append(_load())
                times["scp"].append(_scp(lab, artifact))
                times["deploykit"].append(_deploykit(conns, artifact))
            for conn in conns:
                conn.run(["rm", "-rf", str(Path(TARGET).parent)])
        medians = {k: statistics.median(v) for k, v in times.items()}
        ratio = medians["deploykit"] / medians["scp"]
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.size_mb} MiB to {len(HOSTS)} hosts, median of {args.runs} "
              f"(load average before each run: {'; '.join(loads)})")
        for name, values in times.items():
            print(f"  {name:10s} {medians[name]:6.2f} s   runs: "
                  + ", ".join(f"{v:.2f}" for v in values))
        print(f"  ratio deploykit/scp: {ratio:.2f} (target <= 2.0); "
              f"deploykit process peak RSS {rss_mb:.0f} MB")
        results = HERE / "results"
        results.mkdir(exist_ok=True)
        (results / "upload.json").write_text(json.dumps({
            "size_mb": args.size_mb, "hosts": len(HOSTS), "runs": times, "medians": medians,
            "ratio": ratio, "peak_rss_mb": rss_mb, "load_average": loads,
            "python": platform.python_version(),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }, indent=2) + "\n")
    finally:
        for conn in conns:
            conn.close()
        if not args.keep:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
