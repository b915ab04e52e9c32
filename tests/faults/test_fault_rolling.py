"""A web host lost during a rolling deploy whose ``max_fail_percentage`` allows it.

Blue/green (test_fault_bluegreen.py) is all-or-nothing; a rolling deploy may go on
without a host. Here: the single-colour layout (``current`` + program ``sampleapp`` on
port 8000) over both web hosts in serial batches of one, ``max_fail_percentage=50``,
under the fleet lock (:func:`deploykit.journal.fleet_lock`, as a library user composes
them). Every sshd of web-2 is killed when its batch starts and stays dead until the
deploy is over: web-1 is updated, web-2 is reported failed and left as it was, the
lock is released where it can be and the run says where it could not; once web-2 is
back, the lock is cleared and the same deploy converges.
"""

from __future__ import annotations

import pytest
from faultkit import APP, HOSTS, Fleet, StepWire

from deploykit import journal
from deploykit.artifacts import Artifact
from deploykit.inventory import Host
from deploykit.pipeline import ensure_artifact
from deploykit.strategies import rolling
from deploykit.tasks import http
from deploykit.testing.sample import app_env

pytestmark = pytest.mark.lab
PORT = 8000
FRESH = "v6"  # a release that may need an upload (when this module runs alone)


def version_on(host: Host) -> str | None:
    response = http.request(f"http://{host.address}:{PORT}/version", timeout=5.0)
    return str(response.json()["version"]) if response.status == 200 else None


def test_a_lost_host_within_max_fail_percentage_leaves_the_others_updated(
        fleet: Fleet) -> None:
    if fleet.serving("web-1") is None:  # run alone: the app's database comes with v1
        fleet.ensure("v1")
    served = [fleet.serving(h) for h in ("web-1", "web-2")]
    current = fleet.link("web-2", "current")
    (fleet.root / "src" / "versions" / f"{FRESH}.toml").write_text(
        'description = "v2 again, as a fresh release"\nmigrations = 2\nfeatures = ["notes"]\n')
    # a good release installed already but not ``current`` (no upload), else a fresh one
    new = "v1" if current != f"/srv/{APP}/releases/v1" else FRESH
    project = fleet.project()
    artifact: Artifact = ensure_artifact(project.config, new)
    web, db = project.web, project.db
    assert db is not None
    plan = rolling.Rolling(APP, artifact, app_env(db, APP), port=PORT, serial=1,
                           max_fail_percentage=50, health_interval=0.2)
    conns = [fleet.ssh(h) for h in HOSTS]
    wire = StepWire().before("web-2", r".", lambda: fleet.faults.kill_sshd("web-2"))
    try:
        with journal.fleet_lock(conns, APP, "faults-rolling-1", version_to=new,
                                strategy="rolling") as lock:
            outcome = rolling.deploy(plan, web, deploy_id="faults-rolling-1", reporter=wire)
            lock.end("succeeded" if outcome.ok else "failed", steps=outcome.report,
                     message=outcome.message)
    finally:
        fleet.faults.restore_sshd("web-2")
    wire.assert_fired()
    assert outcome.result == "deployed", outcome.message
    assert (outcome.updated, outcome.failed) == (["web-1"], ["web-2"])
    assert "failed within max_fail_percentage: web-2" in outcome.message
    assert outcome.report.hosts["web-2"].failed
    assert version_on(web[0]) == new
    assert version_on(web[1]) is None  # web-2 was never touched: nothing runs on 8000
    assert fleet.link("web-2", "current") == current
    # the app's blue/green traffic through nginx was not disturbed on either host
    assert [fleet.serving(h) for h in ("web-1", "web-2")] == served
    # the lock: released where the deploy could reach, and it says where it could not
    assert sorted(lock.release_errors) == ["web-2"]
    assert [journal.lock_status(fleet.ssh(h), APP) is None for h in HOSTS] == \
        [True, False, True]
    assert fleet.ends("faults-rolling-1") == {"web-1": "succeeded", "db-1": "succeeded"}
    # web-2 is back: clear its lock (recorded), and the same deploy converges
    assert journal.unlock(fleet.ssh("web-2"), APP, force=True) is not None
    with journal.fleet_lock(conns, APP, "faults-rolling-2", version_to=new,
                            strategy="rolling") as lock:
        again = rolling.deploy(plan, web, deploy_id="faults-rolling-2")
        lock.end("succeeded" if again.ok else "failed", steps=again.report)
    assert again.result == "deployed", again.message
    assert again.updated == ["web-1", "web-2"] or again.updated == ["web-2"]
    assert [version_on(h) for h in web] == [new, new]
    assert fleet.unlocked()
