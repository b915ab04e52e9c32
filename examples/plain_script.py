"""deploykit from a plain Python script: no invoke needed.

    python examples/plain_script.py inventories/lab.yml web [--check] [--json report.json]

Creates /srv/hello on the selected hosts with a directory, a rendered
template, a config line and a guarded command, prints what changed, and exits
non-zero when any host failed. Run it twice: the second run changes nothing.
"""

from __future__ import annotations

import argparse
import sys

from deploykit import DeployError, Inventory, Runner, step
from deploykit.report import make_reporter
from deploykit.tasks import files, system

MOTD = "Hello from {{ inventory_hostname }} ({{ roles | join(',') }})\n"


def main(argv: list[str] | None = None) -> int:
    """Apply a small configuration to the selected hosts; return the exit code."""
    parser = argparse.ArgumentParser(description="apply /srv/hello to some hosts")
    parser.add_argument("inventory")
    parser.add_argument("selector", help="host, group, glob or comma list")
    parser.add_argument("--check", action="store_true", help="only show what would change")
    parser.add_argument("--json", metavar="PATH", help="write the full run report as JSON")
    args = parser.parse_args(argv)
    try:
        hosts = Inventory.load(args.inventory).select(args.selector)
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
    runner = Runner(steps, check=args.check, reporter=make_reporter())
    report = runner.run(hosts, json_path=args.json)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
