"""The sample app's server state, as a testinfra suite: ``invoke verify --suite`` and the
deploy gates run it (``pytest --inventory inventories/lab.yml --hosts web examples/verify``).

``deploy_context`` says what is being verified (app, version, release, colour, port,
supervisor program): a deploy gate passes it, otherwise it is read from the host (the
active colour). ``pre_switch`` tests run against the idle colour before nginx sends it
traffic; ``post_switch`` tests once it serves. Host vars: ``app_user`` (default
``www-data``), ``app_root`` (default ``/srv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import testinfra.host

from deploykit.verify import DeployContext

SUPERVISORCTL = ("supervisorctl", "/etc/supervisor/supervisord.conf")


def app_dir(ctx: DeployContext, host_vars: Mapping[str, Any]) -> str:
    return f"{host_vars.get('app_root', '/srv')}/{ctx.app}"


def release_dir(ctx: DeployContext, host_vars: Mapping[str, Any]) -> str:
    assert ctx.release, "no release to verify (nothing deployed?)"
    return f"{app_dir(ctx, host_vars)}/releases/{ctx.release}"


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_program_runs_under_supervisor(host: testinfra.host.Host,
                                       deploy_context: DeployContext) -> None:
    program = host.supervisor(deploy_context.program, *SUPERVISORCTL)
    assert program.status == "RUNNING", f"{deploy_context.program} is {program.status}"


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_port_listening(host: testinfra.host.Host, deploy_context: DeployContext) -> None:
    assert deploy_context.port, "no port to check"
    listening = host.socket.get_listening_sockets()
    assert any(s.startswith("tcp://") and s.endswith(f":{deploy_context.port}")
               for s in listening), f"nothing listens on TCP port {deploy_context.port}"


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_release_is_the_deployed_version(host: testinfra.host.Host,
                                         deploy_context: DeployContext,
                                         host_vars: Mapping[str, Any]) -> None:
    rdir = release_dir(deploy_context, host_vars)
    if deploy_context.color:
        link = host.file(f"{app_dir(deploy_context, host_vars)}/{deploy_context.color}")
        assert link.is_symlink and link.linked_to == rdir
    assert host.file(f"{rdir}/VERSION").content_string.strip() == deploy_context.version


@pytest.mark.post_switch
def test_current_points_at_the_release(host: testinfra.host.Host,
                                       deploy_context: DeployContext,
                                       host_vars: Mapping[str, Any]) -> None:
    current = host.file(f"{app_dir(deploy_context, host_vars)}/current")
    assert current.is_symlink, "current is not a symlink"
    assert current.linked_to == release_dir(deploy_context, host_vars)


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_env_file_is_private_to_the_app_user(host: testinfra.host.Host,
                                             deploy_context: DeployContext,
                                             host_vars: Mapping[str, Any]) -> None:
    # the release's own environment file (each release has one; .env links to it)
    path = f"{release_dir(deploy_context, host_vars)}/.env"
    seen = host.run("stat -L -c '%%a %%U' -- %s", path)
    assert seen.rc == 0, f"{path} is missing"
    user = host_vars.get("app_user", "www-data")
    mode, owner = seen.stdout.split()
    assert (oct(int(mode, 8)), owner) == (oct(0o600), user)


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_nginx_config_is_valid(host: testinfra.host.Host) -> None:
    check = host.run("nginx -t")
    assert check.rc == 0, check.stderr.strip()


@pytest.mark.post_switch
def test_nginx_sends_traffic_to_the_colour(host: testinfra.host.Host,
                                           deploy_context: DeployContext) -> None:
    if deploy_context.color is None:
        pytest.skip("a single-colour deploy: no colour to point at")
    app = deploy_context.app
    marker = host.file(f"/etc/nginx/deploykit/{app}.active")
    assert marker.content_string.strip() == deploy_context.color
    upstream = host.file(f"/etc/nginx/conf.d/{app}_upstream.conf").content_string
    servers = [line.split()[1].rstrip(";") for line in upstream.splitlines()
               if line.strip().startswith("server ") and " down" not in line]
    assert servers == [f"127.0.0.1:{deploy_context.port}"], upstream


# The app's own view: its .env, its venv's psycopg, run as the app user.
SCHEMA_VERSION = """
import psycopg
env = dict(line.split("=", 1) for line in open(".env").read().splitlines()
           if "=" in line and not line.lstrip().startswith("#"))
url = env.get("DATABASE_URL", "").strip()
if not url:
    print("no-database")
    raise SystemExit(0)
with psycopg.connect(url, connect_timeout=5) as db:
    print(db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])
"""


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_database_reachable_and_migrated(host: testinfra.host.Host,
                                         deploy_context: DeployContext,
                                         host_vars: Mapping[str, Any]) -> None:
    rdir = release_dir(deploy_context, host_vars)
    shipped = host.run("ls -1 %s", f"{rdir}/migrations").stdout.split()
    expected = max((int(name.split("_", 1)[0]) for name in shipped
                    if name.endswith(".up.sql")), default=0)
    user = host_vars.get("app_user", "www-data")
    run = host.run("cd %s && runuser -u %s -- venv/bin/python -c %s", rdir, user,
                   SCHEMA_VERSION)
    assert run.rc == 0, f"cannot query the database: {run.stderr.strip()[-300:]}"
    if run.stdout.strip() == "no-database":
        pytest.skip("the app has no DATABASE_URL")
    assert int(run.stdout.strip()) == expected, "schema_migrations is not at the release's " \
        f"last migration ({expected})"


@pytest.mark.pre_switch
@pytest.mark.post_switch
def test_no_world_writable_files_in_the_release(host: testinfra.host.Host,
                                                deploy_context: DeployContext,
                                                host_vars: Mapping[str, Any]) -> None:
    found = host.run("find %s -xdev ! -type l -perm -o+w -print",
                     release_dir(deploy_context, host_vars))
    assert found.rc == 0, found.stderr
    assert found.stdout.split() == []
