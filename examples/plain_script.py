"""deploykit from a plain Python script: no invoke, no YAML needed.

    python examples/plain_script.py inventories/lab.yml web

Creates /srv/hello on the selected hosts with a directory, a rendered
template and a config line, prints what changed, and exits non-zero when any
host failed. Run it twice: the second run changes nothing.
"""

from __future__ import annotations

import sys

from deploykit import DeployError
from deploykit.inventory import Inventory
from deploykit.report import make_reporter
from deploykit.runner import Runner, step
from deploykit.tasks import files, system

MOTD = "Hello from {{ inventory_hostname }} ({{ roles | join(',') }})\n"


def main(inventory_path: str, selector: str) -> int:
    """Apply a small configuration to the selected hosts; return the exit code."""
    try:
        hosts = Inventory.load(inventory_path).select(selector)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = [
        files.directory("/srv/hello", mode=0o755),
        files.template("/srv/hello/motd", template_string=MOTD, mode=0o644),
        files.line_in_file("/srv/hello/settings.ini", "workers=4", regexp=r"^workers=",
                           create=True),
        step(system.command("uptime > /srv/hello/uptime", creates="/srv/hello/uptime"),
             name="record uptime once"),
    ]
    report = Runner(steps, reporter=make_reporter()).run(hosts)
    return 1 if report.failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
