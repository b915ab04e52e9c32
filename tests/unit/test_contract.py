"""The app contract (deploykit.contract): typed sections, defaults, errors naming the key,
the key listing for ``invoke config``, and the examples' deploykit.yml files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit import contract
from deploykit.contract import AppContract, load_contract
from deploykit.errors import ConfigError
from deploykit.tasks import migrations
from deploykit.tasks.health import HttpCheck, VersionCheck

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"

FULL: dict[str, Any] = {
    "app": "notes",  # config.py's: ignored here
    "build": {"source": ".", "exclude": ["v2"], "steps": ["python manage.py collectstatic "
                                                          "--noinput"]},
    "processes": {
        "web": {"command": ["venv/bin/gunicorn", "--bind", "127.0.0.1:{port}",
                            "dkdjango.wsgi"], "environment": {"APP_VERSION": "{version}"}},
        "workers": {"mailer": {"command": ["venv/bin/python", "manage.py", "mailer"],
                               "count": 2}},
        "manager": "systemd", "port_variable": None,
    },
    "health": {"path": "/admin/login/", "status": [200, 302]},
    "version": {"path": "/version", "json_field": "version"},
    "nginx": {"server_name": ["notes.example.com", "*.notes.example.com"],
              "static": [{"url": "/static/", "path": "staticfiles", "expires": "7d"},
                         {"url": "/media/", "path": "media", "from": "shared"}],
              "tls": {"certificate": "/etc/ssl/notes.crt", "key": "/etc/ssl/notes.key",
                      "redirect_http": True},
              "client_max_body_size": "10m"},
    "shared": {"files": [".env"], "dirs": ["media"]},
    "migrate": {"tool": "django", "kinds": {"notes.0002_note_done": "expand"}},
    "database": {"engine": "postgres", "name": "notes", "access": "tcp",
                 "app_role": "notes_app"},
    "checks": {"counts": {"tables": ["notes_note"], "tolerance": 0}},
    "hooks": {"post_install": ["venv/bin/python manage.py check --deploy"]},
}


def test_every_section_loads_typed() -> None:
    c = load_contract(FULL, "deploykit.yml")
    assert isinstance(c, AppContract)
    assert c.build.exclude == ["v2"] and c.build.fetch_wheels is True
    web = c.processes.web
    assert web is not None and web.argv(port=8001) == [
        "venv/bin/gunicorn", "--bind", "127.0.0.1:8001", "dkdjango.wsgi"]
    assert web.env(version="v2") == {"APP_VERSION": "v2"}
    assert c.processes.workers["mailer"].count == 2 and c.processes.port_variable is None
    assert c.health == HttpCheck(path="/admin/login/", status=(200, 302))
    assert c.version == VersionCheck(path="/version", json_field="version")
    assert [(loc.url, loc.directory, loc.expires) for loc in c.nginx.locations("/srv/notes",
                                                                              "blue")] == [
        ("/static/", "/srv/notes/blue/staticfiles/", "7d"),
        ("/media/", "/srv/notes/shared/media/", None)]
    tls = c.nginx.tls_spec()
    assert tls is not None and tls.redirect_http and tls.port == 443
    assert c.nginx.directives() == ["client_max_body_size 10m"]
    assert c.migrate.tool == "django" and c.migrate.default_kind == "contract"
    assert c.database is not None and c.database.app_role == "notes_app"
    assert c.checks.counts.tables == ["notes_note"]
    assert c.hooks.post_install == ["venv/bin/python manage.py check --deploy"]
    tool = migrations.tool_for(c.migrate, engine=c.database.engine)
    assert isinstance(tool, migrations.DjangoTool) and tool.transactional


def test_an_empty_file_gives_the_defaults() -> None:
    c = load_contract({})
    assert c.health.path == "/" and c.health.status == (200,)
    assert c.version is None and c.database is None and c.migrate.tool is None
    assert c.nginx.server_name == ["_"] and c.shared.files == [".env"]
    assert c.processes.manager == "supervisor" and c.processes.port_variable == "PORT"


@pytest.mark.parametrize(("patch", "message"), [
    ({"migrate": {"tol": "django"}}, "deploykit.yml: migrate: unknown key 'tol'; did you "
                                     "mean 'tool'?"),
    ({"migrate": {"tool": "liquibase"}}, "deploykit.yml: migrate.tool: 'liquibase' is not "
                                         "one of sql, alembic, django, flask, command"),
    ({"migrate": {"tool": "command", "up": "x", "pending": "y"},
      "database": {"engine": "postgres"}},
     "deploykit.yml: migrate.down: required with tool: command"),
    ({"migrate": {"tool": "sql"}, "database": {"engine": "sqlite", "path": "a.db"}},
     "deploykit.yml: migrate.tool: sql needs database.engine: postgres"),
    ({"migrate": {"tool": "django"}}, "deploykit.yml: migrate.tool: needs a database section"),
    ({"migrate": {"kinds": {"a": "additive"}}}, "migrate.kinds.a: 'additive' is not one of "
                                               "expand, contract"),
    ({"processes": {"web": {"command": ["x"], "count": "2"}}},
     "deploykit.yml: processes.web.count: expected a whole number, not '2'"),
    ({"processes": {"web": {"command": []}}}, "processes.web.command: a non-empty list"),
    ({"processes": {"web": {"command": ["run", "--port={prot}"]}}},
     "processes.web.command: unknown placeholder {prot}"),
    ({"processes": {"workers": {"bad name": {"command": ["x"]}}}},
     "processes.workers: invalid program name 'bad name'"),
    ({"nginx": {"server_name": ["shop.test;include /etc/passwd"]}},
     "deploykit.yml: nginx.server_name: invalid server_name"),
    ({"nginx": {"server_name": "shop.test"}}, "nginx.server_name: expected a list of a string"),
    ({"nginx": {"static": [{"url": "/static/", "path": "../etc"}]}},
     "nginx.static[0].path: '../etc' must be a relative path inside the release"),
    ({"nginx": {"static": [{"url": "static", "path": "s"}]}},
     "nginx.static[0].url: nginx location 'static'"),
    ({"nginx": {"static": [{"url": "/s/", "path": "s", "from": "disk"}]}},
     "nginx.static[0].from: 'disk' is not one of release, shared"),
    ({"nginx": {"tls": {"certificate": "/c.pem", "key": "k.pem"}}},
     "nginx.tls.key: 'k.pem' must be an absolute path"),
    ({"health": {"path": "health"}}, "deploykit.yml: health.path: must start with '/'"),
    ({"health": {"status": [200, 700]}}, "health.status: an HTTP status"),
    ({"health": {"stauts": 200}}, "health: unknown key 'stauts'; did you mean 'status'?"),
    ({"version": {"body_pattern": "v1"}}, "version.body_pattern: must contain {version}"),
    ({"database": {"engine": "sqlite"}}, "database.path: required with engine: sqlite"),
    ({"database": {"engine": "postgres", "access": "docker"}},
     "database.container: required with access: docker"),
    ({"database": {"name": "x; drop"}}, "database.name: 'x; drop' is not a plain name"),
    ({"shared": {"dirs": ["/abs"]}}, "shared.dirs: '/abs' must be a relative path"),
    ({"checks": {"counts": {"tables": ["a b"]}}}, "checks.counts.tables: 'a b' is not a "
                                                  "table name"),
    ({"hooks": {"post_instal": ["x"]}}, "hooks: unknown key 'post_instal'; did you mean "
                                        "'post_install'?"),
    ({"build": "src"}, "deploykit.yml: build: expected a mapping, not 'src'"),
])
def test_errors_name_the_file_and_the_key(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_contract(patch, "deploykit.yml")
    assert message in str(err.value)
    assert str(err.value).startswith("deploykit.yml: ")


def test_every_key_is_listed_with_a_default_and_a_doc() -> None:
    listed = {k.key: k for k in contract.keys()}
    for key in ("build.git_ref", "build.steps", "processes.web.command",
                "processes.workers.NAME.count", "processes.port_variable", "health.path",
                "health.json_field", "health.body_pattern", "version.json_field",
                "nginx.server_name", "nginx.static[].from", "nginx.tls.certificate",
                "shared.dirs", "migrate.tool", "migrate.down", "migrate.kinds",
                "database.engine", "database.access", "database.app_role",
                "checks.counts.tables", "checks.counts.tolerance", "hooks.post_install"):
        assert key in listed, key
        assert listed[key].doc, key
    assert listed["nginx.server_name"].default == ["_"]
    assert listed["migrate.default_kind"].default == "contract"
    assert listed["health.status"].default == [200]
    assert "processes not yet started" in listed["hooks.post_install"].doc or \
        "not started" in listed["hooks.post_install"].doc
    assert set(contract.SECTIONS) == {"build", "processes", "health", "version", "nginx",
                                      "shared", "migrate", "database", "checks", "hooks"}


def test_every_hook_point_says_what_has_and_has_not_happened() -> None:
    assert list(contract.HOOK_POINTS)[:2] == ["pre_deploy", "post_install"]
    assert re.search(r"installed.*not started", contract.HOOK_POINTS["post_install"])


@pytest.mark.parametrize("example", ["django", "datasette"])
def test_the_examples_deploykit_yml_follow_the_contract(example: str) -> None:
    path = EXAMPLES / example / "deploykit.yml"
    c = load_contract(yaml.safe_load(path.read_text()), str(path))
    assert c.migrate.tool is not None and c.database is not None
    migrations.tool_for(c.migrate, engine=c.database.engine, database=c.database.name)
    assert c.processes.web is not None


def test_the_version_check_has_no_expected_value_key() -> None:
    listed = {k.key for k in contract.keys()}
    assert "health.json_value" in listed and "version.json_value" not in listed
    with pytest.raises(ConfigError, match=r"version: unknown key 'json_value'"):
        load_contract({"version": {"json_field": "v", "json_value": "1"}})
