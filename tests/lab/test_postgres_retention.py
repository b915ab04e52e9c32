"""One retention rule for backups, on the lab's db-1 (issue 17 item 2).

The pre-deploy backup of the newest successful deploy (what ``rollback --db``
restores) and the newest verified backup are never deleted by a deploy's
backup cleanup, whatever came after: failed deploys, manual backups.
The history the rule reads is the host's real ``history.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from lab_data import data_prefix, db1_conn, deployed  # noqa: F401 (fixtures)

from deploykit import pg
from deploykit.connection import Connection
from deploykit.tasks import postgres

pytestmark = pytest.mark.lab

HOST = "db-1"








def sha256(conn: Connection, path: str) -> str:
    return conn.run(f"sha256sum < {path} | cut -c1-64").stdout.strip()


@pytest.mark.parametrize("after", ["failed deploys", "manual backups"])
def test_rollback_backup_survives_ten_backups_after_the_last_success(
        conn: Connection, prefix: str, after: str, lab_host: Callable[[str], Any]) -> None:
    db = f"{prefix}_shop"
    with pg.connect(conn, "postgres") as c:
        c.autocommit = True
        c.execute(f"CREATE DATABASE {db}")
    with pg.connect(conn, db) as c:
        c.execute("CREATE TABLE orders (id int)")
        c.execute("INSERT INTO orders SELECT generate_series(1, 42)")
        c.commit()
    directory = f"/var/backups/{prefix}"
    good = f"{directory}/{db}-good1.dump"
    deployed(conn, prefix, "good0", "succeeded")
    assert postgres.backup(db, app=prefix, deploy_id="good0", keep_last=3).run(conn).ok
    deployed(conn, prefix, "good1", "succeeded")
    assert postgres.backup(db, app=prefix, deploy_id="good1", keep_last=3).run(conn).ok
    digest = sha256(conn, good)

    results = []
    for n in range(10):
        if after == "failed deploys":
            deploy_id = f"bad{n}"
            deployed(conn, prefix, deploy_id, "failed")
        else:
            deploy_id = f"manual-{n}"
        results.append(postgres.backup(db, app=prefix, deploy_id=deploy_id,
                                       keep_last=3).run(conn))
    assert all(r.ok for r in results), [r.message for r in results]

    files = lab_host(HOST).check_output(f"ls {directory}").split()
    # the rollback backup is there, intact (and still restorable: 42 rows)
    assert f"{db}-good1.dump" in files and f"{db}-good1.dump.sha256" in files
    assert sha256(conn, good) == digest
    assert postgres.verify_backup(good).run(conn).ok
    assert "TABLE DATA public orders" in conn.run(f"pg_restore --list {good}").stdout
    # ...and the rule still prunes
    if after == "failed deploys":  # the older success's backup went: 3 newer deploy backups
        assert f"{db}-good0.dump" not in files and f"{db}-bad6.dump" not in files
    else:  # manual backups push out only manual ones
        assert f"{db}-good0.dump" in files and f"{db}-manual-6.dump" not in files
    assert results[-1].data["kept"][f"{db}-good1.dump"][0] == (
        "pre-deploy backup of good1, the newest successful deploy (rollback --db)")
