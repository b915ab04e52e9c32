"""SQLite backups listed and pruned by the shared retention rule, on the lab's web-1."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from lab_data import deployed, make_sqlite

from deploykit import journal
from deploykit.connection import Connection
from deploykit.shell import join
from deploykit.tasks import sqlite
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab





def test_list_and_cleanup_keep_the_rollback_backup(
        clean_lab: Lab, lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    app = f"dkq{uuid.uuid4().hex[:6]}"
    directory = f"/srv/{app}"
    db, backups = f"{directory}/app.db", f"{directory}/backups"
    make_sqlite(conn, db, 50)
    try:
        deployed(conn, app, "good", "succeeded")
        assert sqlite.backup(db, "good", backup_dir=backups).run(conn).changed
        good = sqlite.backup_path(db, "good", backups)
        digest = conn.run(join(["sha256sum", good])).stdout
        for n in range(4):
            deployed(conn, app, f"bad{n}", "failed")
            assert sqlite.backup(db, f"bad{n}", backup_dir=backups).run(conn).changed
        for n in range(3):
            assert sqlite.backup(db, f"manual-{n}", backup_dir=backups).run(conn).changed

        listed = sqlite.list_backups(db, backup_dir=backups).run(conn)
        assert listed.ok and [b["deploy_id"] for b in listed.data["backups"]] == [
            "manual-2", "manual-1", "manual-0", "bad3", "bad2", "bad1", "bad0", "good"]
        assert all(b["verified"] for b in listed.data["backups"])

        cleanup = sqlite.cleanup_backups(db, app=app, keep_last=1, backup_dir=backups)
        result = apply_twice(conn, cleanup)
        assert result.diff == ("remove: app.db.bad0.bak, app.db.bad1.bak, app.db.bad2.bak, "
                               "app.db.manual-0.bak, app.db.manual-1.bak -> (none)")
        left = sorted(conn.run(join(["ls", backups])).stdout.split())
        assert left == sorted(f"app.db.{i}.bak{x}" for i in ("good", "bad3", "manual-2")
                              for x in ("", ".sha256"))
        assert conn.run(join(["sha256sum", good])).stdout == digest
        assert sqlite.restore(db, "good", backup_dir=backups).run(conn).changed
    finally:
        conn.run(join(["rm", "-rf", "--", directory, journal.state_dir(app)]))
