"""nginx tasks without hosts: rendering, validation, drain edits, probe -> facts -> plan.

The probe snippets run in the local ``sh`` against files in a temporary
directory (the tasks' :class:`NginxSettings` point there), and plans are made
with a connection that refuses any command: a plan never writes. Applying
(``nginx -t``, reload, restore) is tested on the lab in tests/lab.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.inventory import Host
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.task import Plan, Task
from deploykit.tasks import nginx
from deploykit.tasks.nginx import NginxSettings, Server

HEAD = "# Managed by deploykit (nginx.upstream) for app 'shop'. Edits here are overwritten.\n"
PWNED = "'; touch /tmp/pwned #"


class RefusingConnection:
    """Enough of a Connection for plan(): a host name, and no command ever."""

    def __init__(self) -> None:
        self.host = Host(name="web-1", address="192.0.2.1", groups=("web",))
        self.name = self.host.name
        self.secrets: set[Secret] = set()

    def run(self, *args: object, **kwargs: object) -> object:
        raise AssertionError(f"a plan must not run commands: {args}")

    def get(self, path: str) -> bytes:
        raise AssertionError(f"a plan must not fetch files: {path}")


@pytest.fixture
def settings(tmp_path: Path) -> NginxSettings:
    """Debian's layout, moved under a temporary directory."""
    for d in ("conf.d", "sites-available", "sites-enabled", "deploykit"):
        (tmp_path / d).mkdir()
    return NginxSettings(upstream_dir=str(tmp_path / "conf.d"),
                         sites_available=str(tmp_path / "sites-available"),
                         sites_enabled=str(tmp_path / "sites-enabled"),
                         state_dir=str(tmp_path / "deploykit"))


def probe_locally(task: Task) -> dict[str, Any]:
    """Run the task's probe snippet in the local sh and parse it, as the runner would."""
    out = subprocess.run(["sh", "-c", task.probe_script()], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return task.parse(out)


def plan_locally(task: Task) -> Plan:
    return task.plan(cast(Connection, RefusingConnection()), probe_locally(task))


# -- rendering ----------------------------------------------------------------------------


def upstream_text(task: nginx.UpstreamTask) -> str:
    return task.text.decode()


def test_switch_renders_the_active_colour_only() -> None:
    task = nginx.switch("shop", "blue")
    assert upstream_text(task) == (HEAD + "upstream shop_upstream {\n"
                                   "    server 127.0.0.1:8001;\n}\n")
    assert task.active == "blue"
    assert task.name == "nginx.switch shop -> blue"


def test_switch_with_idle_colours_as_backup_and_directives() -> None:
    task = nginx.switch("shop", "green", colors={"blue": 8001, "green": "10.0.0.7:9000"},
                        idle_as_backup=True, directives=["keepalive 16;", "least_conn"])
    assert upstream_text(task).splitlines()[2:] == [
        "    server 10.0.0.7:9000;", "    server 127.0.0.1:8001 backup;",
        "    keepalive 16;", "    least_conn;", "}"]


def test_colours_may_name_several_addresses_and_an_ipv6_backend() -> None:
    task = nginx.switch("shop", "blue", colors={"blue": ["10.0.0.5:8001", "10.0.0.6:8001"],
                                                "green": 8002})
    assert [s.address for s in task.servers] == ["10.0.0.5:8001", "10.0.0.6:8001"]
    assert nginx.switch("shop", "green", backend="::1").servers[0].address == "[::1]:8002"


def test_weights_render_weight_and_zero_as_down() -> None:
    task = nginx.weights("shop", {"blue": 1, "green": 3, "10.0.0.9:80": 0}, active="blue")
    assert upstream_text(task).splitlines()[2:5] == [
        "    server 127.0.0.1:8001 weight=1;", "    server 127.0.0.1:8002 weight=3;",
        "    server 10.0.0.9:80 down;"]
    assert task.active == "blue"
    assert task.name == "nginx.weights shop blue=1 green=3 10.0.0.9:80=0"
    assert nginx.weights("shop", {"blue": 95, "green": 5}).active is None


def test_server_params_are_written_as_given() -> None:
    line = Server("unix:/run/shop.sock", weight=2, params="max_fails=3 fail_timeout=10s",
                  backup=True, down=True).render()
    assert line == "server unix:/run/shop.sock weight=2 max_fails=3 fail_timeout=10s backup down;"


@pytest.mark.parametrize(("build", "message"), [
    (lambda: nginx.switch("shop", "purple"), "unknown colour 'purple'; colours: blue, green"),
    (lambda: nginx.switch("shop", "Blue"), "colour 'Blue'"),
    (lambda: nginx.switch("sh op", "blue"), "app name 'sh op'"),
    (lambda: nginx.switch("../etc", "blue"), "app name '../etc'"),
    (lambda: nginx.switch(PWNED, "blue"), "app name"),
    (lambda: nginx.weights("shop", {"blue": 0, "green": 0}), "no server would take traffic"),
    (lambda: nginx.weights("shop", {"blue": -1}), "weight of blue must be an integer >= 0"),
    (lambda: nginx.weights("shop", {"blue": True}), "weight of blue"),
    (lambda: nginx.weights("shop", {}), "empty"),
    (lambda: nginx.weights("shop", {"blue": 1, "127.0.0.1:8001": 2}), "listed twice"),
    (lambda: nginx.upstream("shop", []), "no server"),
    (lambda: nginx.upstream("shop", [Server("127.0.0.1:1", backup=True)]), "no server would"),
    (lambda: Server("127.0.0.1"), "expected host:port"),
    (lambda: Server("127.0.0.1:0"), "expected host:port"),
    (lambda: Server("127.0.0.1:70000"), "expected host:port"),
    (lambda: Server("a b:80"), "expected host:port"),
    (lambda: Server("unix:/run/x;y"), "expected host:port"),
    (lambda: Server("127.0.0.1:80", weight=0), "weight 0 is written as 'down'"),
    (lambda: Server("127.0.0.1:80", params="max_fails=1; include /x"), "params"),
    (lambda: Server("127.0.0.1:80", params="a\nb"), "params"),
    (lambda: nginx.switch("shop", "blue", directives=["keepalive 1 }"]), "directive"),
    (lambda: nginx.switch("shop", "blue", directives="least_conn"), "list of strings"),
    (lambda: nginx.site("shop", "a;b"), "invalid server_name"),
    (lambda: nginx.site("shop", "shop.test", listen="80; include /x"), "invalid listen"),
    (lambda: nginx.site("shop", "shop.test", upstream="x y"), "invalid upstream name"),
    (lambda: nginx.site("shop", "shop.test", read_timeout="1 h"), "not an nginx time"),
    (lambda: nginx.site("shop", "shop.test", next_upstream_tries=-1), "next_upstream_tries"),
    (lambda: nginx.drain("shop", []), "no server given"),
    (lambda: NginxSettings(state_dir="relative"), "absolute path"),
])
def test_bad_arguments_are_refused_when_the_task_is_built(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def test_site_renders_a_proxy_with_retries_on_errors() -> None:
    task = nginx.site("shop", ["shop.test", "www.shop.test"], listen=[80, "[::]:80"],
                      directives=["client_max_body_size 10m"])
    text = task.text.decode()
    assert text.startswith("# Managed by deploykit (nginx.site) for app 'shop'.")
    for line in ("    listen 80;", "    listen [::]:80;",
                 "    server_name shop.test www.shop.test;", "        proxy_pass http://shop_upstream;",
                 "        proxy_next_upstream error timeout;",
                 "        proxy_next_upstream_tries 2;", "        proxy_connect_timeout 2s;",
                 '        proxy_set_header Connection "";',
                 "        client_max_body_size 10m;"):
        assert line in text.splitlines(), line
    assert "proxy_pass http://api_upstream;" in nginx.site(
        "shop", "_", upstream="api_upstream").text.decode()


# -- drain: editing the rendered upstream --------------------------------------------------


TWO = nginx.weights("shop", {"blue": 1, "green": 3}).text.decode()


def test_set_down_marks_and_unmarks_one_server() -> None:
    drained = nginx.set_down(TWO, "shop", "127.0.0.1:8002", True)
    assert drained == TWO.replace("8002 weight=3;", "8002 weight=3 down;")
    assert nginx.set_down(drained, "shop", "127.0.0.1:8002", True) == drained
    assert nginx.set_down(drained, "shop", "127.0.0.1:8002", False) == TWO
    assert [(s.address, s.down) for s in nginx.parse_upstream(drained, "shop")] == [
        ("127.0.0.1:8001", False), ("127.0.0.1:8002", True)]


def test_set_down_refuses_unknown_servers_and_the_last_live_one() -> None:
    with pytest.raises(TaskError, match=r"server 127.0.0.1:9 is not in upstream shop_upstream "
                                        r"\(servers: 127.0.0.1:8001, 127.0.0.1:8002\)"):
        nginx.set_down(TWO, "shop", "127.0.0.1:9", True)
    one = nginx.set_down(TWO, "shop", "127.0.0.1:8002", True)
    with pytest.raises(TaskError, match=re.escape(
            "refusing to drain 127.0.0.1:8001: upstream shop_upstream would have no server "
            "taking traffic")):
        nginx.set_down(one, "shop", "127.0.0.1:8001", True)
    backup = nginx.switch("shop", "blue", idle_as_backup=True).text.decode()
    with pytest.raises(TaskError, match="refusing to drain"):
        nginx.set_down(backup, "shop", "127.0.0.1:8001", True)


def test_parse_upstream_needs_the_app_block() -> None:
    with pytest.raises(TaskError, match="no 'upstream other_upstream"):
        nginx.parse_upstream(TWO, "other")
    with pytest.raises(TaskError, match="block not closed"):
        nginx.parse_upstream(TWO.replace("}\n", ""), "shop")


def test_nginx_message_drops_timestamps_and_pids() -> None:
    raw = ("2026/11/25 17:54:47 [emerg] 4143#4143: invalid parameter \"max_conns=abc\" in "
           "/etc/nginx/conf.d/shop_upstream.conf:3\n"
           "nginx: configuration file /etc/nginx/nginx.conf test failed\n")
    assert nginx.nginx_message(raw) == (
        '[emerg] invalid parameter "max_conns=abc" in /etc/nginx/conf.d/shop_upstream.conf:3\n'
        "nginx: configuration file /etc/nginx/nginx.conf test failed")


# -- probe and plan, on real files ---------------------------------------------------------


def test_switch_plans_the_upstream_and_the_marker(settings: NginxSettings) -> None:
    task = nginx.switch("shop", "blue", settings=settings)
    plan = plan_locally(task)
    upstream_file = settings.upstream_file("shop")
    assert [(c.attribute, c.before, c.after) for c in plan.changes] == [
        (f"upstream {upstream_file}", None, f"{len(task.text)} bytes"),
        ("active colour", None, "blue")]
    assert plan.changes[0].diff.splitlines()[:2] == ["--- /dev/null", f"+++ {upstream_file}"]

    Path(upstream_file).write_bytes(task.text)
    Path(settings.marker("shop")).write_text("blue\n")
    assert not plan_locally(task)  # as wanted: nothing to do

    green = plan_locally(nginx.switch("shop", "green", settings=settings))
    assert [c.attribute for c in green.changes] == [f"upstream {upstream_file}", "active colour"]
    assert "-    server 127.0.0.1:8001;\n+    server 127.0.0.1:8002;" in green.changes[0].diff
    assert (green.changes[1].before, green.changes[1].after) == ("blue", "green")


def test_weights_without_a_colour_leave_the_marker_alone(settings: NginxSettings) -> None:
    Path(settings.marker("shop")).write_text("blue\n")
    task = nginx.weights("shop", {"blue": 95, "green": 5}, settings=settings)
    assert [p for p, _ in task.managed()] == [settings.upstream_file("shop")]
    assert [c.attribute for c in plan_locally(task).changes] == [
        f"upstream {settings.upstream_file('shop')}"]


def test_drain_plans_one_line_and_needs_the_upstream(settings: NginxSettings) -> None:
    task = nginx.drain("shop", "green", settings=settings)
    with pytest.raises(TaskError, match="no upstream file for app shop"):
        plan_locally(task)
    Path(settings.upstream_file("shop")).write_text(TWO)
    plan = plan_locally(task)
    changed = [x for x in plan.changes[0].diff.splitlines()[2:] if x[:1] in "+-"]
    assert changed == ["-    server 127.0.0.1:8002 weight=3;",
                       "+    server 127.0.0.1:8002 weight=3 down;"]
    assert task.name == "nginx.drain shop 127.0.0.1:8002"
    assert not plan_locally(nginx.undrain("shop", "127.0.0.1:8002", settings=settings))


def test_site_plans_file_link_and_default_removal(settings: NginxSettings, tmp_path: Path
                                                  ) -> None:
    (tmp_path / "sites-available/default").write_text("server {}\n")
    Path(settings.default_site).symlink_to(tmp_path / "sites-available/default")
    task = nginx.site("shop", "shop.test", disable_default=True, settings=settings)
    plan = plan_locally(task)
    site_file, link = settings.site_file("shop"), settings.site_link("shop")
    assert [(c.attribute, c.before, c.after) for c in plan.changes] == [
        (f"site {site_file}", None, f"{len(task.text)} bytes"),
        (f"enabled {link}", None, f"link to {site_file}"),
        (f"default site {settings.default_site}",
         f"link to {tmp_path / 'sites-available/default'}", None)]

    Path(site_file).write_bytes(task.text)
    Path(link).symlink_to(site_file)
    Path(settings.default_site).unlink()
    assert not plan_locally(task)
    Path(settings.default_site).write_text("server {}\n")  # a regular file this time
    assert plan_locally(task).changes[0].diff.splitlines()[-1] == "-server {}"


def test_a_directory_where_a_file_belongs_fails_the_plan(settings: NginxSettings) -> None:
    Path(settings.upstream_file("shop")).mkdir()
    with pytest.raises(TaskError, match=re.escape("shop_upstream.conf is a directory")):
        plan_locally(nginx.switch("shop", "blue", settings=settings))


def test_probe_quotes_paths(tmp_path: Path) -> None:
    odd = tmp_path / PWNED
    odd.mkdir(parents=True)
    settings = NginxSettings(upstream_dir=str(odd), state_dir=str(odd))
    plan = plan_locally(nginx.switch("shop", "blue", settings=settings))
    assert len(plan.changes) == 2
    assert not Path("/tmp/pwned").exists()


# -- active colour --------------------------------------------------------------------------


def test_active_color_task_reads_the_marker(settings: NginxSettings) -> None:
    task = nginx.active_color_task("shop", settings=settings)
    conn = cast(Connection, RefusingConnection())
    assert probe_locally(task) == {"color": None}
    Path(settings.marker("shop")).write_text("green\n")
    result = task.run(conn, facts=probe_locally(task))
    assert (result.status, result.data, result.message) == (
        Status.OK, {"color": "green"}, "active colour: green")
    Path(settings.marker("shop")).write_text("rm -rf /\n")
    with pytest.raises(TaskError, match="holds 'rm -rf /', not a colour name"):
        probe_locally(task)


# -- the app contract's site: strict server names, static locations, TLS ------------------------


@pytest.mark.parametrize("name", [
    "~^(?<sub>.+)\\.example\\.com$",  # a regular expression (captures reach proxy headers)
    "$host", "a|b", "(x)", "x?", "a\\b", "[x]", "-bad.example", "bad-.example", "a..b",
    "*.*.example", "exa mple.com", "a;b", "a}b", "a\nlisten 81", "a'b", 'a"b', "a#b", "",
    "x" * 64 + ".com", "ex$ample.com",
])
def test_a_hostile_server_name_is_refused_before_anything_is_rendered(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid server_name"):
        nginx.site("shop", name)
    with pytest.raises(ConfigError, match=r"^nginx: invalid server_name"):
        nginx.check_server_name(name)


@pytest.mark.parametrize("name", ["shop.example.com", "*.example.com", ".example.com",
                                  "www.example.*", "_", "localhost", "10.0.0.5", "[::1]",
                                  "xn--bcher-kva.example"])
def test_ordinary_server_names_pass(name: str) -> None:
    assert nginx.check_server_name(name) == name


def test_static_locations_and_tls_render_before_the_proxy() -> None:
    task = nginx.site("shop", "shop.test", locations=[
        nginx.StaticLocation("/static/", "/srv/shop/current/staticfiles", expires="7d"),
        nginx.StaticLocation("/media/", "/srv/shop/shared/media/")],
        tls=nginx.Tls("/etc/nginx/tls/shop.crt", "/etc/nginx/tls/shop.key"))
    text = task.text.decode() if isinstance(task.text, bytes) else task.text
    assert "    listen 80;\n    listen 443 ssl;\n" in text
    assert "ssl_certificate /etc/nginx/tls/shop.crt;" in text
    assert "ssl_certificate_key /etc/nginx/tls/shop.key;" in text
    assert ("    location /static/ {\n        alias /srv/shop/current/staticfiles/;\n"
            "        access_log off;\n        expires 7d;\n    }\n") in text
    assert "    location /media/ {\n        alias /srv/shop/shared/media/;\n" in text
    assert text.index("location /static/") < text.index("location / {")
    redirect = nginx.render_site(
        "shop", ["shop.test"], listen=["80"], upstream="shop_upstream",
        next_upstream="error", next_upstream_tries=2, connect_timeout="2s",
        read_timeout="60s", tls=nginx.Tls("/c.pem", "/k.pem", redirect_http=True))
    first, second = redirect.split("server {")[1:]
    assert "listen 80;" in first and "return 301 https://$host$request_uri;" in first
    assert "listen 80;" not in second and "listen 443 ssl;" in second


@pytest.mark.parametrize(("build", "message"), [
    (lambda: nginx.StaticLocation("static/", "/srv/x/"), "a path prefix such as /static/"),
    (lambda: nginx.StaticLocation("/", "/srv/x/"), "a path prefix"),
    (lambda: nginx.StaticLocation("/s;/", "/srv/x/"), "a path prefix"),
    (lambda: nginx.StaticLocation("/static/", "srv/x"), "must be an absolute path"),
    (lambda: nginx.StaticLocation("/static/", "/srv/../etc/"), "no '..'"),
    (lambda: nginx.StaticLocation("/static/", "/srv/x; root /"), "must be an absolute path"),
    (lambda: nginx.StaticLocation("/static/", "/srv/x/", expires="1 d"), "expires '1 d'"),
    (lambda: nginx.Tls("/etc/c.pem", "/etc/k.pem;"), "nginx.tls.key: '/etc/k.pem;'"),
    (lambda: nginx.Tls("/etc/c.pem", "/etc/k.pem", port=0), "nginx.tls.port: 0"),
    (lambda: nginx.site("shop", "shop.test", locations=[
        nginx.StaticLocation("/s/", "/a/"), nginx.StaticLocation("/s/", "/b/")]),
     "a location URL appears twice"),
])
def test_locations_and_tls_are_validated(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()
