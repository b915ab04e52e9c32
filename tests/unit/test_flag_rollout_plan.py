"""Flag rollout step logic (pure Python, fake verdicts) and the HTTP analysis against a
real local HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploykit.errors import ConfigError, TaskError
from deploykit.strategies.analysis import Thresholds, Verdict
from deploykit.strategies.flag_rollout import FlagRollout, HttpAnalysis, drive

PASS, FAIL, UNSURE = Verdict("pass"), Verdict("fail", (), ("too many errors",)), \
    Verdict("inconclusive", (), ("too few requests",))


class Recorder:
    """Records the calls drive() makes, in order."""

    def __init__(self, verdicts: dict[float, Verdict], set_error: float | None = None) -> None:
        self.verdicts = verdicts
        self.set_error = set_error
        self.calls: list[str] = []

    def set_rollout(self, percent: float) -> str | None:
        self.calls.append(f"set {percent:g}")
        return "redis down" if percent == self.set_error else None

    def kill(self) -> str | None:
        self.calls.append("kill")
        return None

    def sleep(self, seconds: float) -> None:
        self.calls.append(f"wait {seconds:g}")

    def analysis(self, percent: float) -> tuple[Verdict, dict[str, float]]:
        self.calls.append(f"analyse {percent:g}")
        return self.verdicts[percent], {"errors": percent}


def run(rec: Recorder, steps: tuple[float, ...] = (5, 25, 50)):  # type: ignore[no-untyped-def]
    plan = FlagRollout("beta", rec.analysis, steps=steps, window=2)
    return drive(plan, rec.set_rollout, rec.kill, sleep=rec.sleep)


def test_every_step_passing_promotes_with_each_steps_figures() -> None:
    rec = Recorder({5: PASS, 25: PASS, 50: PASS})
    outcome = run(rec)
    assert outcome.result == "promoted" and outcome.ok and outcome.rollout == 50
    assert rec.calls == ["set 5", "wait 2", "analyse 5", "set 25", "wait 2", "analyse 25",
                         "set 50", "wait 2", "analyse 50"]
    assert [(s.index, s.rollout, s.verdict.status, s.figures) for s in outcome.steps] == [
        (0, 5, "pass", {"errors": 5}), (1, 25, "pass", {"errors": 25}),
        (2, 50, "pass", {"errors": 50})]
    assert outcome.message == "beta rolled out to 50 % (5, 25, 50 % passed)"


def test_a_failing_step_pulls_the_kill_switch_and_stops() -> None:
    rec = Recorder({5: PASS, 25: FAIL})
    outcome = run(rec)
    assert outcome.result == "killed" and not outcome.ok and outcome.rollout == 25
    assert rec.calls == ["set 5", "wait 2", "analyse 5", "set 25", "wait 2", "analyse 25",
                         "kill"]
    assert outcome.steps[-1].as_dict()["verdict"]["reasons"] == ["too many errors"]
    assert outcome.message == "beta killed at 25 %: fail: too many errors"


def test_an_inconclusive_step_holds_without_killing() -> None:
    rec = Recorder({5: UNSURE})
    outcome = run(rec)
    assert outcome.result == "paused" and outcome.ok and outcome.rollout == 5
    assert rec.calls == ["set 5", "wait 2", "analyse 5"]


def test_a_failed_flag_write_stops_before_any_analysis() -> None:
    rec = Recorder({5: PASS}, set_error=25)
    outcome = run(rec)
    assert outcome.result == "failed" and outcome.rollout == 5
    assert outcome.message == "setting beta to 25 % failed: redis down"
    assert rec.calls == ["set 5", "wait 2", "analyse 5", "set 25"]


def test_an_analysis_error_counts_as_a_failure() -> None:
    rec = Recorder({})

    def broken(percent: float) -> Verdict:
        raise TaskError("metrics endpoint down")

    plan = FlagRollout("beta", broken, steps=(5, 50), window=0)
    outcome = drive(plan, rec.set_rollout, rec.kill, sleep=rec.sleep)
    assert outcome.result == "killed"
    assert rec.calls == ["set 5", "wait 0", "kill"]
    assert outcome.steps[0].verdict.reasons == ("analysis failed: metrics endpoint down",)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": (50, 25)}, "must increase"),
    ({"steps": (0, 50)}, "above 0"),
    ({"steps": (5, 150)}, "from 0 to 100"),
    ({"steps": ()}, "above 0"),
    ({"window": -1}, "window must be"),
    ({"flag": "bad name"}, "invalid flag name"),
])
def test_bad_plans_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"flag": "beta", "analysis": lambda p: PASS, **kwargs}
    with pytest.raises(ConfigError, match=message):
        FlagRollout(**args)  # type: ignore[arg-type]


# -- the HTTP analysis against a real local server ---------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, int]]]:
    """A local HTTP server: ``/ok`` answers 200, ``/broken`` 500; counts requests."""
    hits = {"/ok": 0, "/broken": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            self.send_response(200 if self.path == "/ok" else 500)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"hi")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", hits
    httpd.shutdown()
    httpd.server_close()


def test_http_analysis_passes_a_healthy_url(server: tuple[str, dict[str, int]]) -> None:
    base, hits = server
    verdict, figures = HttpAnalysis([f"{base}/ok"], Thresholds(min_requests=20), n=30)(5)
    assert verdict.status == "pass", verdict.reasons
    assert hits["/ok"] == 30
    assert figures["stats"]["requests"] == 30 and figures["stats"]["errors"] == 0
    assert [c.name for c in verdict.checks] == ["error_rate", "p95_ms"]


def test_http_analysis_fails_on_500s(server: tuple[str, dict[str, int]]) -> None:
    base, hits = server
    verdict, figures = HttpAnalysis([f"{base}/ok", f"{base}/broken"],
                                    Thresholds(min_requests=20), n=20)(5)
    assert verdict.status == "fail"
    assert figures["stats"]["errors"] == 20 and figures["stats"]["requests"] == 40
    assert figures["stats"]["statuses"] == {"200": 20, "500": 20}
    assert hits == {"/ok": 20, "/broken": 20}
    assert verdict.reasons == ("canary 5xx 50.00%, at most 1.00%",)


def test_http_analysis_with_too_few_requests_is_inconclusive(
        server: tuple[str, dict[str, int]]) -> None:
    base, _ = server
    verdict, _ = HttpAnalysis([f"{base}/broken"], Thresholds(min_requests=20), n=5)(5)
    assert verdict.status == "inconclusive"


def test_http_analysis_needs_a_list_of_urls() -> None:
    with pytest.raises(ConfigError, match="list of URLs"):
        HttpAnalysis("http://127.0.0.1/")
