"""One measured deploykit run of bench/scale.py:
``python bench/scale_worker.py INVENTORY SELECTOR FORKS``.

Like bench/noop_worker.py (the same workload, a whole new process), with the
runner's pool as wide as given, and it prints which hosts failed as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import workload

from deploykit.inventory import Inventory
from deploykit.runner import Runner


def main() -> int:
    """Apply the workload; print {"hosts": n, "reported": n, "failed": [...]}."""
    hosts = Inventory.load(sys.argv[1]).select(sys.argv[2])
    report = Runner(workload(), forks=int(sys.argv[3])).run(hosts)
    failed = sorted(name for name, host in report.hosts.items() if host.failed)
    print(json.dumps({"hosts": len(hosts), "reported": len(report.hosts), "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
