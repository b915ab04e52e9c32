"""One measured deploykit run: ``python bench/noop_worker.py INVENTORY SELECTOR``.

A separate process so that the measured wall time includes interpreter start,
imports, connections and the run itself, as a user would see it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import workload

from deploykit.inventory import Inventory
from deploykit.runner import Runner


def main() -> int:
    """Apply the workload to the selected hosts; exit 1 when anything failed."""
    hosts = Inventory.load(sys.argv[1]).select(sys.argv[2])
    report = Runner(workload()).run(hosts)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
