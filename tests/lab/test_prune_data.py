"""``invoke prune`` keeps the data it cannot get back, on the lab's db-1 (issue 17 items 2, 3).

* the pre-deploy backup of the newest successful deploy survives however many
  manual and failed-deploy backups came after it (the same rule as the deploy's
  own cleanup: ``postgres.retention.plan``);
* the newest ``<db>_old_<time>`` database (after ``rollback --db`` the only copy of
  what was written after the backup) is always kept, and so is any younger than
  ``old_database_keep_days``; prune says what it keeps and why.
"""

from __future__ import annotations

import time

import pytest
from lab_data import admin, data_prefix, db1_conn, deployed  # noqa: F401 (fixtures)

from deploykit.connection import Connection
from deploykit.ops import prune
from deploykit.tasks import postgres

pytestmark = pytest.mark.lab

HOST = "db-1"










def stamp(seconds_ago: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() - seconds_ago))


def test_prune_keeps_the_rollback_backup_and_the_newest_old_database(
        conn: Connection, prefix: str) -> None:
    db = f"{prefix}_shop"
    admin(conn, f"CREATE DATABASE {db}")
    deployed(conn, prefix, "good", "succeeded")
    assert postgres.backup(db, app=prefix, deploy_id="good").run(conn).ok
    good = f"/var/backups/{prefix}/{db}-good.dump"
    digest = conn.run(f"sha256sum < {good}").stdout
    for n in range(4):
        assert postgres.backup(db, app=prefix, deploy_id=f"manual-{n}").run(conn).ok
        deployed(conn, prefix, f"bad{n}", "failed")
        assert postgres.backup(db, app=prefix, deploy_id=f"bad{n}").run(conn).ok

    ancient, older = f"{db}_old_20200101000000", f"{db}_old_20200102000000"
    young, newest = f"{db}_old_{stamp(7200)}", f"{db}_old_{stamp(3600)}"
    for name in (ancient, older, young, newest):
        admin(conn, f'CREATE DATABASE "{name}"')
    admin(conn, "CREATE TABLE orders AS SELECT generate_series(1, 17) AS id", db=newest)

    settings = prune.PruneSettings(prefix, database=db, backup_keep_last=1,
                                   old_database_keep_days=1.0)
    plan = prune.find({HOST: conn}, [], HOST, settings)
    doomed = {(i.kind, i.name) for i in plan.items}
    assert doomed == {("database", ancient), ("database", older),
                      *(("backup", f"{db}-{i}.dump") for i in
                        ("manual-0", "manual-1", "manual-2", "bad0", "bad1", "bad2"))}
    kept = {i.name: i.detail for i in plan.kept}
    assert ("pre-deploy backup of good, the newest successful deploy (rollback --db)"
            in kept[f"{db}-good.dump"])
    assert "newest" in kept[newest] and "younger than 1 day" in kept[young]

    outcome = prune.remove({HOST: conn}, plan, settings, op_id=f"prune-{prefix}")
    assert outcome[HOST][1] == []
    left = {str(r[0]) for r in admin(
        conn, f"SELECT datname FROM pg_database WHERE datname LIKE '{db}_old%'")}
    assert left == {young, newest}
    assert admin(conn, "SELECT count(*) FROM orders", db=newest) == [(17,)]
    assert conn.run(f"sha256sum < {good}").stdout == digest
    assert postgres.verify_backup(good).run(conn).ok
