"""Benchmark: postgres.backup and postgres.restore (with swap) of a ~100 MB database.

    .venv/bin/python bench/pg_backup.py [--runs 3] [--rows 600000] [--json PATH]

Brings up its own one-host lab (``dkpg``, 198.18.0.64/27: db-1 with
PostgreSQL 15; a leftover lab of that name is removed first), fills a
database server-side with ``generate_series`` (nothing is sent but the SQL),
then, ``--runs`` times: a backup for a new deploy id
(pg_dump -Fc on the host, verification, sidecar) and a restore of that dump
with swap (restore into ``<db>_restore``, ANALYZE, swap). It also times the
no-op second run of each (the dump verified again: SHA-256 and pg_restore
--list). Wall times are measured around ``task.run`` on one SSH connection, as
a deploy script would run them. Prints every run and the medians; the lab is
always torn down.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from deploykit import pg  # noqa: E402
from deploykit.connection import Connection  # noqa: E402
from deploykit.inventory import Inventory  # noqa: E402
from deploykit.result import Result, Status  # noqa: E402
from deploykit.task import Task  # noqa: E402
from deploykit.tasks import postgres  # noqa: E402
from deploykit.testing.lab import Lab, LabHostSpec  # noqa: E402

LAB_NAME, LAB_NETWORK = "dkpg", "198.18.0.64/27"
HOST, DB, APP = "db-1", "bench", "bench"


def timed(task: Task, conn: Connection, expect: Status) -> tuple[float, Result]:
    """Wall seconds of one ``task.run(conn)``, which must end with status ``expect``."""
    started = time.perf_counter()
    result = task.run(conn)
    elapsed = time.perf_counter() - started
    if result.status is not expect:
        raise SystemExit(f"{result.task}: {result.status.value}, expected {expect.value}: "
                         f"{result.message}")
    return elapsed, result


def fill(conn: Connection, rows: int) -> int:
    """Create the database and fill it server-side; return pg_database_size."""
    with pg.connect(conn) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    with pg.connect(conn, DB) as db:
        db.execute("CREATE TABLE events (id bigint PRIMARY KEY, created timestamptz NOT NULL, "
                   "kind int NOT NULL, payload text NOT NULL)")
        db.execute("INSERT INTO events SELECT g, now() - g * interval '1 second', g %% 17, "
                   "md5(g::text) || md5((g * 7)::text) FROM generate_series(1, %s) g", [rows])
        db.execute("CREATE INDEX ON events (created)")
        db.execute("CREATE TABLE kinds AS SELECT g AS id, 'kind ' || g AS name "
                   "FROM generate_series(0, 16) g")
        db.execute("VACUUM ANALYZE")
        row = db.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(str(row[0]))


def drop_kept(conn: Connection) -> None:
    """Drop the databases earlier restores kept, so that disk use stays flat."""
    with pg.connect(conn) as admin:
        for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                     [f"{DB}\\_old\\_%"]).fetchall():
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def main() -> int:
    """Run the benchmark and print the wall times."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=600_000,
                        help="rows in the events table (600000: about 100 MB on disk)")
    parser.add_argument("--compress", type=int, help="pg_dump compression level (0-9)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    lab = Lab([LabHostSpec(HOST, ("db",))], name=LAB_NAME, network=LAB_NETWORK)
    figures: dict[str, list[float]] = {"backup": [], "backup no-op": [], "restore with swap": [],
                                       "  of which the swap": [], "restore no-op": []}
    info: dict[str, object] = {}
    try:
        lab.down()  # a leftover lab of this name may have another fleet: start from nothing
        lab.up()
        inventory = Inventory.from_dict(lab.inventory(), source="<lab>")
        with Connection(inventory.host(HOST)) as conn:
            started = time.perf_counter()
            size = info["database_bytes"] = fill(conn, args.rows)
            info["fill_seconds"] = round(time.perf_counter() - started, 2)
            print(f"database {DB}: {size / 1048576:.1f} MiB "
                  f"(pg_database_size), filled in {info['fill_seconds']} s")
            for run in range(1, args.runs + 1):
                task = postgres.backup(DB, app=APP, deploy_id=f"run{run}", keep_last=2,
                                       compress=args.compress)
                seconds, result = timed(task, conn, Status.CHANGED)
                figures["backup"].append(seconds)
                info["dump_bytes"] = result.data["size"]
                figures["backup no-op"].append(timed(task, conn, Status.OK)[0])
                restore = postgres.restore(DB, result.data["path"], tables=["events", "kinds"],
                                           if_changed=True)  # the no-op run below skips
                seconds, result = timed(restore, conn, Status.CHANGED)
                figures["restore with swap"].append(seconds)
                figures["  of which the swap"].append(result.data["swap_seconds"])
                if result.data["counts"]["events"] != args.rows:
                    raise SystemExit(f"restored {result.data['counts']} rows, not {args.rows}")
                figures["restore no-op"].append(timed(restore, conn, Status.OK)[0])
                drop_kept(conn)
                print(f"run {run}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()))
    finally:
        lab.down()

    dump_mib = int(str(info["dump_bytes"])) / 1048576
    print(f"\n{platform.node()} ({platform.processor() or platform.machine()}), "
          f"{args.runs} run(s), database {int(str(info['database_bytes'])) / 1048576:.1f} MiB, "
          f"dump {dump_mib:.1f} MiB (custom format, compression "
          f"{'default' if args.compress is None else args.compress})")
    print(f"{'':20} {'median':>8} {'min':>8} {'max':>8}  (wall seconds)")
    for label, values in figures.items():
        print(f"{label:20} {statistics.median(values):8.2f} {min(values):8.2f} "
              f"{max(values):8.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "runs": args.runs, "rows": args.rows, **info,
                                         "seconds": figures}, indent=2) + "\n")
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
