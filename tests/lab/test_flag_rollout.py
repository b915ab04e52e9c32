"""Flag rollouts against the lab's Redis on db-1, judged by measuring a real local HTTP
server on 127.0.0.1 (healthy, or answering 500s); read back with the runtime API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis as redispy

from deploykit.connection import Connection
from deploykit.flags import Flags
from deploykit.inventory import Inventory
from deploykit.result import Status
from deploykit.strategies.analysis import Thresholds, Verdict
from deploykit.strategies.flag_rollout import FlagRollout, HttpAnalysis, rollout
from deploykit.tasks import redis
from deploykit.testing.idempotence import writes

pytestmark = pytest.mark.lab

HOST = "db-1"
FLAG = "dkfr-rollout"
KEY = f"deploykit:flag:{FLAG}"
USERS = [f"user-{i}" for i in range(2000)]


@pytest.fixture
def rdb(lab_connection: Callable[[str], Connection]) -> Iterator[redispy.Redis]:
    """An app's redis-py client on db-1; the flag's key is removed before and after."""
    with redis.connect(lab_connection(HOST)) as client:
        client.delete(KEY)
        yield client
        client.delete(KEY)


@pytest.fixture
def app() -> Iterator[str]:
    """A local app: ``/health`` answers 200, ``/broken`` 500."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 500)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def share_enabled(rdb: redispy.Redis) -> float:
    api = Flags(rdb)
    return sum(api.is_enabled(FLAG, user_id=u) for u in USERS) / len(USERS)


def test_rollout_5_to_50_with_passing_analysis(lab_connection: Callable[[str], Connection],
                                               rdb: redispy.Redis, app: str) -> None:
    seen: list[float] = []
    measure = HttpAnalysis([f"{app}/health"], Thresholds(min_requests=20), n=30)

    def analysis(percent: float):  # type: ignore[no-untyped-def]
        seen.append(share_enabled(rdb))  # what apps see while the step is judged
        return measure(percent)

    conn = lab_connection(HOST)
    plan = FlagRollout(FLAG, analysis, steps=(5, 50), window=0.1)
    outcome = rollout(plan, conn, deploy_id="dkfr-1")
    assert outcome.result == "promoted", outcome.message
    assert outcome.rollout == 50
    assert [(s.rollout, s.verdict.status) for s in outcome.steps] == [(5, "pass"), (50, "pass")]
    assert all(s.figures["stats"]["requests"] == 30 for s in outcome.steps)
    assert abs(seen[0] - 0.05) <= 0.02 and abs(seen[1] - 0.50) <= 0.05, seen
    stored = {k.decode(): v.decode() for k, v in rdb.hgetall(KEY).items()}  # type: ignore[union-attr]
    assert (stored["enabled"], stored["rollout"], stored["killed"]) == ("1", "50", "0")
    assert abs(share_enabled(rdb) - 0.50) <= 0.05
    results = outcome.report.hosts[HOST].results
    assert [(r.task, r.status) for r in results] == [
        (f"flags.flag {FLAG}", Status.CHANGED), ("flag rollout: analysis 5 %", Status.OK),
        (f"flags.flag {FLAG}", Status.CHANGED), ("flag rollout: analysis 50 %", Status.OK)]
    assert results[1].data["figures"]["stats"]["errors"] == 0
    assert outcome.report.run_id == "dkfr-1"

    # the same rollout again resumes at 50 % (never lowers a live flag): no write at all
    mark = len(conn.log)
    again = rollout(plan, conn, deploy_id="dkfr-2")
    assert again.result == "promoted", again.message
    assert [s.rollout for s in again.steps] == [50]
    assert [(r.task, r.status) for r in again.report.hosts[HOST].results] == [
        (f"flags.flag {FLAG}", Status.OK), ("flag rollout: analysis 50 %", Status.OK)]
    assert writes(conn, mark) == []
    assert rdb.hget(KEY, "rollout") == b"50"


def test_a_killed_flag_is_not_rolled_out(lab_inventory: Inventory,
                                         rdb: redispy.Redis) -> None:
    """Given an inventory Host, the rollout opens (and closes) its own connection."""
    rdb.hset(KEY, mapping={"enabled": "1", "rollout": "5", "allow": "[]", "killed": "1"})
    calls: list[float] = []

    def analysis(percent: float) -> Verdict:
        calls.append(percent)
        return Verdict("pass")

    plan = FlagRollout(FLAG, analysis, steps=(5, 50), window=0)
    outcome = rollout(plan, lab_inventory.host(HOST))
    assert outcome.result == "failed" and calls == []
    assert outcome.message.startswith(f"flag {FLAG} is killed on {HOST}: revive it")
    assert rdb.hget(KEY, "killed") == b"1" and rdb.hget(KEY, "rollout") == b"5"


def test_failing_analysis_at_the_first_step_kills_the_flag(
        lab_connection: Callable[[str], Connection], rdb: redispy.Redis, app: str) -> None:
    plan = FlagRollout(FLAG, HttpAnalysis([f"{app}/broken"], Thresholds(min_requests=20),
                                          n=25), steps=(5, 50), window=0)
    outcome = rollout(plan, lab_connection(HOST), deploy_id="dkfr-3")
    assert outcome.result == "killed" and not outcome.ok, outcome.message
    assert outcome.rollout == 5 and len(outcome.steps) == 1
    step = outcome.steps[0]
    assert step.verdict.status == "fail"
    assert step.figures["stats"]["statuses"] == {"500": 25}
    assert step.verdict.reasons == ("canary 5xx 100.00%, at most 1.00%",)
    stored = {k.decode(): v.decode() for k, v in rdb.hgetall(KEY).items()}  # type: ignore[union-attr]
    assert (stored["enabled"], stored["rollout"], stored["killed"]) == ("1", "5", "1")
    assert share_enabled(rdb) == 0.0
    results = outcome.report.hosts[HOST].results
    assert [(r.task, r.status) for r in results] == [
        (f"flags.flag {FLAG}", Status.CHANGED), ("flag rollout: analysis 5 %", Status.FAILED),
        (f"flags.kill {FLAG}", Status.CHANGED)]
    assert results[1].data["verdict"]["status"] == "fail"
