"""Benchmark: connect_all over live lab hosts plus unreachable addresses.

    .venv/bin/python bench/connect_fleet.py [--dead 25] [--timeout 3] [--keep]

Brings up (or reuses) a 2-host lab (``DEPLOYKIT_LAB_NAME`` / ``DEPLOYKIT_LAB_NETWORK``,
default ``dkconn``, 198.18.4.0/27) and connects to its 2 hosts plus ``--dead`` unused
addresses of its network (nothing answers there), once with ``connect_all`` and once
the way it worked before (a pool of 16 threads, each opening one host after another:
dead hosts cost one timeout per wave of 16). Target (issue 18 item 3): the dead hosts
reported within 2x the connect timeout, the live ones connected. Prints the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploykit.connection import Connection, connect_all
from deploykit.errors import ConnectError
from deploykit.inventory import Host, Inventory
from deploykit.testing.lab import Lab, parse_fleet


def _waves(hosts: list[Host], timeout: float) -> dict[str, object]:
    def one(host: Host) -> object:
        try:
            return Connection(host, connect_timeout=timeout).open()
        except ConnectError as exc:
            return exc
    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip((h.name for h in hosts), pool.map(one, hosts), strict=True))


def main() -> int:
    """Measure both ways once each and print the wall times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dead", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    lab = Lab(parse_fleet("web-1:,web-2:"), name=os.environ.get("DEPLOYKIT_LAB_NAME", "dkconn"),
              network=os.environ.get("DEPLOYKIT_LAB_NETWORK", "198.18.4.0/27"))
    lab.up()
    try:
        inventory = Inventory.from_dict(lab.inventory(), source="<bench lab>")
        live = [inventory.host(s.name) for s in lab.specs]
        used = set(lab.addresses().values()) | {lab.gateway}
        first = int(lab.network[2])
        free = [str(a) for a in lab.network.hosts() if str(a) not in used
                and int(a) >= first][:args.dead]
        hosts = live + [dataclasses.replace(live[0], name=f"dead-{i}", address=a)
                        for i, a in enumerate(free)]
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for name, run in (("connect_all", lambda: connect_all(hosts,
                                                              connect_timeout=args.timeout)),
                          ("pool of 16", lambda: _waves(hosts, args.timeout))):
            started = time.perf_counter()
            opened = run()
            elapsed = time.perf_counter() - started
            ok = sum(isinstance(v, Connection) for v in opened.values())
            for value in opened.values():
                if isinstance(value, Connection):
                    value.close()
            print(f"{name:12s} {len(live)} live + {len(free)} dead hosts, connect timeout "
                  f"{args.timeout:g} s: {elapsed:5.2f} s, {ok} connected "
                  f"(load average {load})")
    finally:
        if not args.keep:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
