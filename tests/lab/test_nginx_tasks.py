"""nginx tasks over real SSH on the lab: real nginx on web-1, real backends behind it.

Two backends run on web-1 (``python3 -m http.server`` on 127.0.0.1:8001 and
:8002, started inside the host with ``lab.nsenter`` and killed by PID after the
test), each serving a page naming its colour. Traffic goes from the
controller through nginx on web-1's address, so a test sees which colour
answers. Every test snapshots web-1's /etc/nginx and puts it back afterwards.

Every writing task is run in check mode first (no write command), then applied
twice: ``changed``, then ``ok`` with no write command sent.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.result import Status
from deploykit.runner import Runner
from deploykit.task import UndoStack
from deploykit.tasks import http, nginx
from deploykit.testing.idempotence import assert_check_mode as check
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.idempotence import writes
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "web-1"
WEB = ("web-1", "web-2")
APP = "shop"
SITE = "shop.test"
COLORS = {"blue": 8001, "green": 8002}
UPSTREAM = "/etc/nginx/conf.d/shop_upstream.conf"
MARKER = "/etc/nginx/deploykit/shop.active"
SNAPSHOT = "/root/dk-test-nginx-snapshot"
# Every file, link and directory under /etc/nginx with its mode, owner and content digest;
# the state dir (backups, lock) is left out where a test says so.
LISTING = (r"find /etc/nginx {prune} -printf '%y %m %U:%G %p %l\n' | sort; "
           r"find /etc/nginx {prune} -type f -print0 | sort -z | xargs -0 sha256sum")


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    """A fresh connection per test, so that its log holds only this test's commands."""
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture
def nginx_conf(clean_lab: Lab) -> Iterator[Lab]:
    """The web hosts' /etc/nginx as built by the lab, put back (and nginx reloaded) after
    the test."""
    for name in WEB:
        clean_lab.nsenter(name, ["sh", "-c", f"rm -rf {SNAPSHOT} && cp -a /etc/nginx {SNAPSHOT}"])
    yield clean_lab
    for name in WEB:
        clean_lab.start_service(name, "nginx")
        clean_lab.nsenter(name, ["sh", "-c",
                                 f"find /etc/nginx -mindepth 1 -maxdepth 1 -exec rm -rf {{}} + && "
                                 f"cp -a {SNAPSHOT}/. /etc/nginx/ && rm -rf {SNAPSHOT} && "
                                 "nginx -s reload"])


@pytest.fixture
def backends(nginx_conf: Lab) -> Iterator[Lab]:
    """Two HTTP servers on web-1 (blue on 8001, green on 8002), killed by PID afterwards."""
    pids: list[int] = []
    try:
        for color, port in COLORS.items():
            root = f"/srv/dk-backend-{color}"
            script = (f"mkdir -p {root} && echo {color} > {root}/index.html && "
                      f"python3 -m http.server {port} --bind 127.0.0.1 --directory {root} "
                      f"</dev/null >/dev/null 2>&1 & echo $!")
            pids.append(int(nginx_conf.nsenter(HOST, ["sh", "-c", script]).stdout))
            ready = (f"i=0; until curl -sf http://127.0.0.1:{port}/ >/dev/null; do "
                     f"i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.05; done")
            nginx_conf.nsenter(HOST, ["sh", "-c", ready])
        yield nginx_conf
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has an empty command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False








def through_nginx(lab: Lab, n: int = 1, host_header: str = SITE) -> collections.Counter[str]:
    """Send ``n`` requests from the controller to web-1's nginx; count the bodies."""
    url = f"http://{lab.address(HOST)}/"
    bodies: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        response = http.request(url, headers={"Host": host_header}, timeout=5)
        bodies[response.text.strip() if response.status == 200 else f"HTTP {response.status}"
               f" {response.error or ''}".strip()] += 1
    return bodies


def listing(lab: Lab, *, with_state: bool = True, name: str = HOST) -> str:
    prune = "" if with_state else "-path /etc/nginx/deploykit -prune -o"
    return lab.nsenter(name, ["sh", "-c", LISTING.format(prune=prune)]).stdout


def master_and_workers(lab: Lab) -> tuple[str, list[str]]:
    out = lab.nsenter(HOST, ["sh", "-c", "p=$(cat /run/nginx.pid); echo $p; pgrep -P $p"])
    master, *workers = out.stdout.split()
    return master, workers


def serve_blue(conn: Connection, lab: Lab) -> None:
    """The starting point of several tests: blue active, the site proxying to it."""
    assert nginx.switch(APP, "blue").run(conn).status is Status.CHANGED
    assert nginx.site(APP, SITE).run(conn).status is Status.CHANGED
    assert through_nginx(lab) == {"blue": 1}


# -- blue/green -----------------------------------------------------------------------------


def test_switch_blue_to_green_through_nginx(conn: Connection, host: Any, backends: Lab) -> None:
    blue = nginx.switch(APP, "blue")
    assert check(conn, blue).diff.splitlines()[-1] == "active colour: (none) -> blue"
    assert not host.file(UPSTREAM).exists and not host.file(MARKER).exists
    apply_twice(conn, blue)
    site = nginx.site(APP, SITE)
    check(conn, site)
    apply_twice(conn, site)
    assert host.file("/etc/nginx/sites-enabled/shop").linked_to == "/etc/nginx/sites-available/shop"
    assert through_nginx(backends, 3) == {"blue": 3}
    assert through_nginx(backends, host_header="other.test") == {"web-1": 1}  # default site

    master, workers = master_and_workers(backends)
    green = nginx.switch(APP, "green")
    diff = apply_twice(conn, green).diff.splitlines()
    assert "-    server 127.0.0.1:8001;" in diff and "+    server 127.0.0.1:8002;" in diff
    assert diff[-1] == "active colour: blue -> green"
    assert through_nginx(backends, 3) == {"green": 3}
    new_master, new_workers = master_and_workers(backends)
    assert new_master == master  # a reload, not a restart
    assert not set(new_workers) & set(workers)  # ... that took: new workers

    assert nginx.active_color(conn, APP) == "green"
    assert host.file(MARKER).content_string == "green\n"
    assert "server 127.0.0.1:8002;" in host.file(UPSTREAM).content_string
    kept = host.file(f"/etc/nginx/deploykit/backup{UPSTREAM}").content_string
    assert "server 127.0.0.1:8001;" in kept  # the version the switch replaced


def test_idle_colour_as_backup_takes_over_when_the_active_one_fails(
        conn: Connection, backends: Lab) -> None:
    apply_twice(conn, nginx.switch(APP, "green", colors={"blue": 8001, "green": 8003},
                                   idle_as_backup=True))
    apply_twice(conn, nginx.site(APP, SITE))
    # nothing listens on 8003: proxy_next_upstream sends every request on to the backup
    assert through_nginx(backends, 5) == {"blue": 5}


# -- failures leave nothing behind ------------------------------------------------------------


def test_a_config_nginx_rejects_is_never_left_in_place(conn: Connection, backends: Lab) -> None:
    serve_blue(conn, backends)
    before, pids = listing(backends), master_and_workers(backends)
    undo = UndoStack()
    bad = nginx.upstream(APP, [nginx.Server("127.0.0.1:8002", params="max_conns=abc")],
                         active="green")
    result = bad.run(conn, undo=undo)
    assert result.status is Status.FAILED
    assert result.message.startswith(
        f"nginx -t rejected the new configuration; restored {UPSTREAM}, {MARKER}: "
        f'[emerg] invalid parameter "max_conns=abc" in {UPSTREAM}:3')
    assert listing(backends) == before  # byte for byte, modes and owners too
    assert master_and_workers(backends) == pids  # not even reloaded
    assert through_nginx(backends, 2) == {"blue": 2}
    assert nginx.active_color(conn, APP) == "blue"
    assert undo.actions == []  # the task put everything back itself: nothing to undo


def test_an_already_broken_config_is_not_touched(conn: Connection, backends: Lab) -> None:
    serve_blue(conn, backends)
    backends.nsenter(HOST, ["sh", "-c", "echo 'this is not nginx;' > /etc/nginx/conf.d/zz.conf"])
    before = listing(backends)
    result = nginx.switch(APP, "green").run(conn)
    assert result.status is Status.FAILED
    assert result.message.startswith(
        "nginx -t fails before any change, nothing written: "
        '[emerg] unknown directive "this" in /etc/nginx/conf.d/zz.conf:1')
    assert listing(backends) == before
    assert through_nginx(backends) == {"blue": 1}


def test_a_reload_that_does_not_take_is_rolled_back(conn: Connection, backends: Lab) -> None:
    serve_blue(conn, backends)
    before, pids = listing(backends), master_and_workers(backends)
    # nginx -t accepts a listen on a port the blue backend holds; only the reload fails
    taken = nginx.site(APP, SITE, listen=["80", "127.0.0.1:8001"])
    result = taken.run(conn)
    assert result.status is Status.FAILED
    assert result.message == (
        "nginx did not take the new configuration; restored /etc/nginx/sites-available/shop: "
        "[emerg] bind() to 127.0.0.1:8001 failed (98: Address already in use)\n"
        "[emerg] still could not bind()")
    assert listing(backends) == before
    assert master_and_workers(backends) == pids
    assert through_nginx(backends, 2) == {"blue": 2}


def test_a_stopped_nginx_fails_the_switch_and_keeps_the_files(conn: Connection,
                                                              backends: Lab) -> None:
    serve_blue(conn, backends)
    before = listing(backends)
    backends.stop_service(HOST, "nginx")
    result = nginx.switch(APP, "green").run(conn)
    assert result.status is Status.FAILED
    assert result.message == (f"nginx reload failed; restored {UPSTREAM}, {MARKER}: nginx is "
                              "not running (no live master process in /run/nginx.pid)")
    assert listing(backends) == before
    backends.start_service(HOST, "nginx")
    assert through_nginx(backends) == {"blue": 1}


# -- undo -----------------------------------------------------------------------------------


def test_undo_restores_every_file_and_reloads(conn: Connection, host: Any, backends: Lab
                                              ) -> None:
    before = listing(backends, with_state=False)
    default = host.file("/etc/nginx/sites-enabled/default")
    default_digest = default.sha256sum
    undo = UndoStack()
    apply_twice(conn, nginx.switch(APP, "blue"), undo)
    site = nginx.site(APP, SITE, disable_default=True)
    assert check(conn, site).diff.splitlines().count(
        "default site /etc/nginx/sites-enabled/default: 220 bytes -> (none)") == 1
    apply_twice(conn, site, undo)
    apply_twice(conn, nginx.switch(APP, "green"), undo)
    assert through_nginx(backends, host_header="any.test") == {"green": 1}

    undone, failed = undo.unwind(conn)
    assert failed == []
    assert undone == [f"restore {UPSTREAM}, {MARKER}",
                      "restore /etc/nginx/sites-available/shop, /etc/nginx/sites-enabled/shop, "
                      "/etc/nginx/sites-enabled/default",
                      f"restore {UPSTREAM}, {MARKER}"]
    assert listing(backends, with_state=False) == before
    assert default.sha256sum == default_digest and default.mode == 0o644
    assert not host.file(UPSTREAM).exists and nginx.active_color(conn, APP) is None
    assert through_nginx(backends, host_header="any.test") == {"web-1": 1}  # reloaded


def test_an_undo_nginx_rejects_is_reported_as_not_undone(conn: Connection, host: Any,
                                                         nginx_conf: Lab) -> None:
    undo = UndoStack()
    apply_twice(conn, nginx.switch(APP, "blue"), undo)
    nginx_conf.nsenter(HOST, ["sh", "-c", "echo 'this is not nginx;' > /etc/nginx/conf.d/zz.conf"])
    undone, failed = undo.unwind(conn)
    assert undone == []
    assert len(failed) == 1 and failed[0].startswith(
        f"restore {UPSTREAM}, {MARKER}: nginx -t fails before any change, nothing written: "
        '[emerg] unknown directive "this" in /etc/nginx/conf.d/zz.conf:1')
    assert host.file(UPSTREAM).exists and nginx.active_color(conn, APP) == "blue"


# -- canary weights and drain -----------------------------------------------------------------


def test_weights_split_the_traffic(conn: Connection, host: Any, backends: Lab) -> None:
    canary = nginx.weights(APP, {"blue": 1, "green": 3}, active="blue")
    check(conn, canary)
    apply_twice(conn, canary)
    apply_twice(conn, nginx.site(APP, SITE))
    assert "server 127.0.0.1:8002 weight=3;" in host.file(UPSTREAM).content_string
    counts = through_nginx(backends, 400)
    assert set(counts) == {"blue", "green"}
    assert abs(counts["blue"] - 100) <= 30 and abs(counts["green"] - 300) <= 30, counts
    assert nginx.active_color(conn, APP) == "blue"

    apply_twice(conn, nginx.weights(APP, {"blue": 1, "green": 0}))
    assert "    server 127.0.0.1:8002 down;\n" in host.file(UPSTREAM).content_string
    assert through_nginx(backends, 20) == {"blue": 20}


def test_drain_and_undrain(conn: Connection, host: Any, backends: Lab) -> None:
    apply_twice(conn, nginx.weights(APP, {"blue": 1, "green": 1}))
    apply_twice(conn, nginx.site(APP, SITE))
    assert through_nginx(backends, 20) == {"blue": 10, "green": 10}

    drain = nginx.drain(APP, "green")
    diff = check(conn, drain).diff.splitlines()
    assert [x for x in diff[3:] if x[:1] in "+-"] == [
        "-    server 127.0.0.1:8002 weight=1;", "+    server 127.0.0.1:8002 weight=1 down;"]
    apply_twice(conn, drain)
    assert through_nginx(backends, 20) == {"blue": 20}

    before = listing(backends)
    refused = nginx.drain(APP, "blue").run(conn)
    assert refused.status is Status.FAILED
    assert refused.message == (f"{UPSTREAM}: refusing to drain 127.0.0.1:8001: upstream "
                               "shop_upstream would have no server taking traffic")
    assert listing(backends) == before

    apply_twice(conn, nginx.undrain(APP, "127.0.0.1:8002"))
    assert through_nginx(backends, 20) == {"blue": 10, "green": 10}


# -- active colour ----------------------------------------------------------------------------


def test_active_color_reads_the_marker_only(conn: Connection, nginx_conf: Lab) -> None:
    mark = len(conn.log)
    assert nginx.active_color(conn, "nothere") is None
    result = nginx.active_color_task("nothere").run(conn)
    assert (result.status, result.data) == (Status.OK, {"color": None})
    assert writes(conn, mark) == [] and len(conn.log) == mark + 2
    apply_twice(conn, nginx.weights("nothere", {"blue": 1}, active="blue", reload=False))
    assert nginx.active_color_task("nothere").run(conn).data == {"color": "blue"}


# -- in a runner ----------------------------------------------------------------------------


def test_in_a_runner_probes_are_batched_and_a_later_failure_unwinds(
        lab_inventory: Inventory, lab_connection: Callable[[str], Connection],
        nginx_conf: Lab) -> None:
    hosts = lab_inventory.select("web")
    steps = [nginx.switch(APP, "blue"), nginx.site(APP, SITE, disable_default=True)]
    first = Runner(steps).run(hosts)
    again = Runner(steps)
    second = again.run(hosts)
    for name in WEB:
        assert [r.status for r in first.hosts[name].results] == [Status.CHANGED] * 2
        assert [r.status for r in second.hosts[name].results] == [Status.OK] * 2
        assert [c.write for c in again.logs[name]] == [False]  # one batched read

    before = {name: listing(nginx_conf, with_state=False, name=name) for name in WEB}
    broken = nginx.weights(APP, {"blue": 1, "green": 1}, directives=["keepalive abc"])
    report = Runner([nginx.switch(APP, "green"), broken]).run(hosts)
    for name in WEB:
        host_report = report.hosts[name]
        assert [r.status for r in host_report.results] == [Status.CHANGED, Status.FAILED]
        assert host_report.results[1].message.startswith(
            f'nginx -t rejected the new configuration; restored {UPSTREAM}: [emerg] invalid '
            f'value "abc" in "keepalive" directive in {UPSTREAM}:')
        assert host_report.undone == [f"restore {UPSTREAM}, {MARKER}"]
        assert host_report.undo_failed == []
        assert listing(nginx_conf, with_state=False, name=name) == before[name]
        assert nginx.active_color(lab_connection(name), APP) == "blue"
