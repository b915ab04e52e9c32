"""deploykit.yml: validation, references to secrets, the rendered .env, the secrets check."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit.config import (
    SCHEMA,
    SECTIONS,
    RenderedEnvCheck,
    describe_keys,
    is_reference,
    load_config,
    parse_config,
    render_env,
)
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.pipeline import Project
from deploykit.pipeline.preflight import preflight_checks
from deploykit.secrets import Secret, redact
from deploykit.tasks.checks import CONTROLLER

PASSWORD = "p@ss w/rd:%&?#x"  # every character percent-encoding must handle


def parse(tmp_path: Path, **data: Any) -> Any:
    return parse_config({"app": "shop", **data}, tmp_path / "deploykit.yml")


def db_host(tmp_path: Path, **extra: Any) -> Host:
    secret_file = tmp_path / "pg.password"
    secret_file.write_text(PASSWORD + "\n")
    return Host("db-1", "198.18.0.13", vars={"postgres_user": "app", "postgres_port": 5433,
                                              "postgres_password_file": str(secret_file),
                                              "redis_port": 6380, **extra})


# -- validation ---------------------------------------------------------------------------


def test_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = parse(tmp_path, source="app", inventory="inv/lab.yml")
    assert cfg.app == "shop" and cfg.strategy == "bluegreen"
    assert cfg.source == tmp_path / "app"
    assert cfg.inventory == tmp_path / "inv" / "lab.yml"
    assert cfg.artifacts == tmp_path / ".deploykit" / "artifacts"
    assert cfg.runs == tmp_path / ".deploykit" / "runs"
    assert cfg.ports == {"blue": 8001, "green": 8002}
    assert cfg.lock_ttl == 3600
    assert cfg.database.name is None and cfg.database.backup is True
    assert cfg.preflight.min_disk_mb == 512 and cfg.preflight.required_secrets == []
    assert cfg.notify.events == ["start", "success", "failure", "rollback"]
    assert cfg.db == "db" and parse(tmp_path, db=None).db is None


def test_missing_app_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing required key 'app'"):
        parse_config({}, tmp_path / "deploykit.yml")


@pytest.mark.parametrize(("data", "message"), [
    ({"verison": "v1"}, r"unknown key 'verison'; did you mean 'version'\?"),
    ({"zzz": 1}, r"unknown key 'zzz'; keys: app, source,"),
    ({"preflight": {"min_disk": 5}}, r"preflight: unknown key 'min_disk'; did you mean "
                                     r"'min_disk_mb'\?"),
    ({"notify": {"timout": 3}}, r"notify: unknown key 'timout'; did you mean 'timeout'\?"),
    ({"database": {"nmae": "x"}}, r"database: unknown key 'nmae'; did you mean 'name'\?"),
])
def test_unknown_keys_at_any_level(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, **data)


@pytest.mark.parametrize(("data", "message"), [
    ({"health_retries": "40"}, r"health_retries must be a whole number >= 0, got '40'"),
    ({"health_retries": True}, r"health_retries must be a whole number"),
    ({"ports": {"blue": 8001}}, r"ports must be \{blue: PORT, green: PORT\}"),
    ({"ports": {"blue": 8001, "green": 70000}}, r"ports must be"),
    ({"strategy": "yolo"}, r"strategy must be bluegreen, rolling or canary, got 'yolo'"),
    ({"app": "bad name"}, r"app must be a name"),
    ({"command": []}, r"command must be a non-empty list of strings"),
    ({"latency_budget_ms": -1}, r"latency_budget_ms must be a number >= 0 or null"),
    ({"preflight": {"ports_listening": [80, "443"]}}, r"preflight.ports_listening must be a "
                                                      r"list of ports"),
    ({"preflight": {"reachable": ["db"]}}, r"preflight.reachable must be a list of "
                                           r"'selector:port'"),
    ({"preflight": {"disk_paths": ["srv"]}}, r"preflight.disk_paths must be a list of "
                                             r"absolute paths"),
    ({"notify": {"events": ["start", "done"]}}, r"notify.events must be a list of start, "),
    ({"env": {"bad-key": "x"}}, r"env must be a mapping of NAME: value"),
])
def test_wrong_types_say_what_they_should_be(tmp_path: Path, data: dict[str, Any],
                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, **data)


def test_credentials_must_be_references(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"preflight.ci_token must be a \$\{env:NAME\} or "
                                          r"\$\{file:PATH\} reference \(secrets never live"):
        parse(tmp_path, preflight={"ci_token": "ghp_literal"})
    with pytest.raises(ConfigError, match=r"notify.slack_webhook_url must be a \$\{env"):
        parse(tmp_path, notify={"slack_webhook_url": "https://hooks.slack.com/T/B/x"})
    cfg = parse(tmp_path, preflight={"ci_token": "${env:CI_TOKEN}"},
                notify={"slack_webhook_url": "${file:slack.url}"})
    assert cfg.preflight.ci_token == "${env:CI_TOKEN}"


def test_apprise_urls_are_references_and_become_notify_targets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 item 8: email, Telegram, PagerDuty... by apprise URL from deploykit.yml."""
    with pytest.raises(ConfigError, match=r"notify.apprise_urls must be a list of "
                                          r"\$\{env:NAME\}"):
        parse(tmp_path, notify={"apprise_urls": ["tgram://bottoken/chat"]})
    monkeypatch.setenv("DK_TEST_TGRAM", "json://user:s3cretpass@127.0.0.1:9/hook")
    cfg = parse(tmp_path, notify={"apprise_urls": ["${env:DK_TEST_TGRAM}"]})
    project = Project(cfg, Inventory.from_dict({"all": {"hosts": {}}}, source="<t>"), [], None)
    notifier = project.notifier()
    assert notifier is not None
    [target] = notifier.webhooks
    assert target.kind == "apprise" and "s3cretpass" not in target.display


def test_a_required_secret_written_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env.SECRET_KEY is a required secret but is "
                                          r"written in deploykit.yml"):
        parse(tmp_path, env={"SECRET_KEY": "hunter2hunter2"},
              preflight={"required_secrets": ["SECRET_KEY"]})
    with pytest.raises(ConfigError, match=r"required_secrets names API_KEY, which env does "
                                          r"not set"):
        parse(tmp_path, env={}, preflight={"required_secrets": ["API_KEY"]})


def test_load_config_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "deploykit.yml"
    with pytest.raises(ConfigError, match=r"deploykit.yml: no such file"):
        load_config(path)
    path.write_text("app: shop\nports: {blue: 1\n")
    with pytest.raises(ConfigError, match=r"deploykit.yml:3: "):
        load_config(path)
    path.write_text("- app\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of keys, got list"):
        load_config(path)
    path.write_text(yaml.safe_dump({"app": "shop", "env": {"DEBUG": True, "WORKERS": 4}}))
    assert load_config(path).env == {"DEBUG": "true", "WORKERS": "4"}


def test_describe_keys_documents_every_key(tmp_path: Path) -> None:
    text = describe_keys()
    for key, spec in SCHEMA.items():
        if spec.kind == "section":
            for sub in SECTIONS[key]:
                assert f"\n{key}.{sub} " in f"\n{text}"
        else:
            assert f"\n{key} " in f"\n{text}"
    assert "app                            (required)" in text


def test_the_project_deploykit_yml_is_valid(project_root: Path) -> None:
    cfg = load_config(project_root / "deploykit.yml")
    assert cfg.app == "sampleapp" and cfg.source == project_root / "examples" / "app"
    assert cfg.database.name == "sampleapp"
    assert cfg.env == {"DATABASE_URL": "${database_url}", "REDIS_URL": "${redis_url}"}


# -- references and the .env ---------------------------------------------------------------


def test_is_reference() -> None:
    assert is_reference("${env:TOKEN}") and is_reference("${file:secrets/token}")
    for text in ("TOKEN", "${TOKEN}", "x${env:TOKEN}", "${env:}", "${database_url}"):
        assert not is_reference(text)


def test_render_env_builds_urls_from_the_inventory_and_encodes_the_password(
        tmp_path: Path) -> None:
    cfg = parse(tmp_path, database={"name": "shop"},
                env={"DATABASE_URL": "${database_url}", "REDIS_URL": "${redis_url}",
                     "DB_HOST": "${db.address}", "APP": "${app}", "PRICE": "$$5",
                     "GREETING": "hello world"})
    env = render_env(cfg, db_host(tmp_path))
    encoded = urllib.parse.quote(PASSWORD, safe="")
    assert env.text.reveal() == (
        f"DATABASE_URL=postgresql://app:{encoded}@198.18.0.13:5433/shop\n"
        "REDIS_URL=redis://198.18.0.13:6380/0\n"
        "DB_HOST=198.18.0.13\nAPP=shop\nPRICE='$5'\nGREETING='hello world'\n")
    assert str(env.text) == "********"
    # the raw password, its encoded form and the whole URL are redacted everywhere
    line = f"dsn=postgresql://app:{encoded}@x raw={PASSWORD}"
    assert PASSWORD not in redact(line, env.secrets) and encoded not in redact(line, env.secrets)
    assert env.values["DB_HOST"].reveal() == "198.18.0.13"


@pytest.mark.parametrize("value", ["a\rDISK_MIN_FREE_MB=999999999", "a\u2028B=1", "a\x0bB=1"])
def test_render_env_refuses_every_line_break(tmp_path: Path, value: str) -> None:
    """Issue 21 item 9: a carriage return (or any break a line splitter honours) would give
    the app an extra variable; the message names the key, never the value."""
    cfg = parse(tmp_path, db=None, env={"INJ": value})
    with pytest.raises(ConfigError, match=r"env\.INJ") as raised:
        render_env(cfg, None)
    assert "999999999" not in str(raised.value)


@pytest.mark.parametrize("name", ["~^(www", "$host", "a b", "shop;evil", "a|b"])
def test_a_hostile_server_name_is_refused_when_the_config_is_read(tmp_path: Path,
                                                                  name: str) -> None:
    """Issue 21: refused before the idle colour is prepared (before anything connects)."""
    with pytest.raises(ConfigError, match=r"server_name: invalid server_name"):
        parse(tmp_path, server_name=name)


def test_render_env_is_inert_when_sourced(tmp_path: Path) -> None:
    """Issue 21 item 12: command substitution and variables stay text for a shell."""
    cfg = parse(tmp_path, db=None, env={"CMD": "$(touch /tmp/pwned) `id` $HOME"})
    assert render_env(cfg, None).text.reveal() == "CMD='$(touch /tmp/pwned) `id` $HOME'\n"


def test_env_and_file_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key.txt").write_text("s3cr3t-from-a-file\n")
    (tmp_path / "key.txt").chmod(0o600)  # a secret file readable by others is refused
    monkeypatch.setenv("SHOP_TOKEN", "tok-from-the-env")
    cfg = parse(tmp_path, db=None, env={"KEY": "${file:key.txt}", "TOKEN": "${env:SHOP_TOKEN}"})
    env = render_env(cfg, None)
    assert env.text.reveal() == "KEY=s3cr3t-from-a-file\nTOKEN=tok-from-the-env\n"
    assert {s.reveal() for s in env.secrets} >= {"s3cr3t-from-a-file", "tok-from-the-env"}
    assert cfg.secret("${env:SHOP_TOKEN}", "x") == Secret("tok-from-the-env")
    assert cfg.url("https://hooks.example.com/x", "x") == "https://hooks.example.com/x"
    assert cfg.url("${env:SHOP_TOKEN}", "x") == Secret("tok-from-the-env")


@pytest.mark.parametrize(("env", "message"), [
    ({"K": "${env:DK_TEST_UNSET_VARIABLE}"}, r"env.K: environment variable "
                                             r"DK_TEST_UNSET_VARIABLE is not set"),
    ({"K": "${file:missing.txt}"}, r"env.K: cannot read secret file .*missing.txt: No such "),
    ({"K": "${nope}"}, r"env.K: unknown reference \$\{nope\}"),
    ({"K": "${env:X"}, r"env.K: unclosed reference"),
    ({"K": "${database_url}"}, r"\$\{database_url\} needs a database host"),
])
def test_bad_references_are_named(tmp_path: Path, env: dict[str, str], message: str) -> None:
    cfg = parse(tmp_path, db=None, env=env)
    with pytest.raises(ConfigError, match=message):
        render_env(cfg, None)


def test_database_url_needs_a_database_name_and_known_vars(tmp_path: Path) -> None:
    cfg = parse(tmp_path, env={"U": "${database_url}"})
    with pytest.raises(ConfigError, match=r"needs database.name"):
        render_env(cfg, db_host(tmp_path))
    cfg = parse(tmp_path, env={"U": "${db.nothing}"})
    with pytest.raises(ConfigError, match=r"host db-1 has no var 'nothing'"):
        render_env(cfg, db_host(tmp_path))


# -- the secrets check ---------------------------------------------------------------------


def check_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: str) -> Any:
    env = {}
    for key, value in values.items():
        monkeypatch.setenv(f"DK_TEST_{key}", value)
        env[key] = f"${{env:DK_TEST_{key}}}"
    cfg = parse(tmp_path, db=None, env=env, preflight={"required_secrets": list(values)})
    return render_env(cfg, None)


def test_rendered_env_check_passes_strong_secrets(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = check_env(tmp_path, monkeypatch, SECRET_KEY="a-long-random-value-1")
    result = RenderedEnvCheck(env, ["SECRET_KEY"]).run_on_controller()
    assert result.ok and result.host == CONTROLLER
    assert result.message == "1 required secret(s) set and not weak"
    assert result.data == {"keys": {"SECRET_KEY": "ok"}}


def test_rendered_env_check_names_each_weak_secret(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = check_env(tmp_path, monkeypatch, A="changeme", B="xxxxxxxxxxxxxxxx", C="tiny1")
    result = RenderedEnvCheck(env, ["A", "B", "C", "D"], min_length=8).run_on_controller()
    assert result.failed
    assert result.message == (
        "secrets in the app's .env (env in deploykit.yml): A is a known default value; "
        "B is one character repeated; C is shorter than 8 characters; D is missing")
    assert "changeme" not in str(result.to_dict())


# -- environments (issue 20 item 1) -----------------------------------------------------------


def production_project(tmp_path: Path) -> Path:
    """The repository's deploykit.yml, its production example as deploykit.production.yml
    and the example production inventory, laid out as a team would copy them."""
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "inventories").mkdir()
    shutil.copy(repo / "deploykit.yml", tmp_path / "deploykit.yml")
    shutil.copy(repo / "deploykit.production.example.yml", tmp_path / "deploykit.production.yml")
    shutil.copy(repo / "inventories" / "production.example.yml",
                tmp_path / "inventories" / "production.yml")
    return tmp_path / "deploykit.yml"


def test_the_production_examples_load_as_an_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = production_project(tmp_path)
    monkeypatch.delenv("DEPLOYKIT_ENV", raising=False)
    project = Project.load(path, environment="production", host="prod-1")
    assert [h.name for h in project.web] == ["prod-1"]
    assert project.db is not None and project.db.name == "db-1"
    assert project.config.inventory == tmp_path / "inventories" / "production.yml"
    assert project.config.lock_ttl == 3600 and project.config.verify_requests == 40
    assert project.config.preflight.min_disk_mb == 1024
    assert project.config.preflight.disk_paths == ["/", "/srv"]  # merged, not replaced
    assert project.environment == "production"
    monkeypatch.setenv("DEPLOYKIT_ENV", "production")
    assert [h.name for h in Project.load(path).web] == ["prod-1", "prod-2"]


def test_environment_mistakes_are_one_clear_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = production_project(tmp_path)
    monkeypatch.delenv("DEPLOYKIT_ENV", raising=False)
    with pytest.raises(ConfigError, match=r"environment 'staging': .*deploykit\.staging\.yml "
                                          r"does not exist \(environments beside deploykit\.yml: "
                                          r"production\)"):
        Project.load(path, environment="staging")
    (tmp_path / "deploykit.staging.yml").write_text("verify_requests: 5\n")
    with pytest.raises(ConfigError, match=r"deploykit\.staging\.yml: an environment names its "
                                          r"own inventory"):
        Project.load(path, environment="staging")
    with pytest.raises(ConfigError, match="invalid environment"):
        Project.load(path, environment="../etc")
    # --inventory replaces the inventory, relative to the working directory
    monkeypatch.chdir(tmp_path / "inventories")
    project = Project.load(path, environment="staging", inventory="production.yml")
    assert [h.name for h in project.web] == ["prod-1", "prod-2"]


def test_reachability_is_checked_from_the_web_hosts(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYKIT_ENV", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the example's postgres_password_file
    secret = tmp_path / ".config" / "deploykit" / "db-1.password"
    secret.parent.mkdir(parents=True)
    secret.write_text("s3cret-for-the-test\n")
    secret.chmod(0o600)
    project = Project.load(production_project(tmp_path), environment="production")
    groups = preflight_checks(project)
    names = {c.name for c in groups["web"]}
    assert {"reachable db-1:5432", "reachable db-1:6379"} <= names
    assert not any(c.kind == "reachable" for c in groups["controller"])


def test_strategy_runtime_and_their_settings(tmp_path: Path) -> None:
    path = tmp_path / "deploykit.yml"
    path.write_text(yaml.safe_dump({
        "app": "shop", "strategy": "canary", "runtime": "compose",
        "rolling": {"serial": "25%", "max_fail_percentage": 10, "drain": False},
        "canary": {"steps": [5, 50, 100], "window": 30, "max_error_rate": 2,
                   "max_p95_ms": 400, "min_requests": 10, "pause": True},
        "compose": {"file": "compose.yml", "phases": [["db"], ["api", "worker"], ["web"]]}}))
    cfg = load_config(path)
    assert (cfg.strategy, cfg.runtime) == ("canary", "compose")
    assert (cfg.rolling.serial, cfg.rolling.max_fail_percentage, cfg.rolling.drain) == \
        ("25%", 10.0, False)
    assert cfg.canary.steps == [5, 50, 100] and cfg.canary.pause and cfg.canary.window == 30
    assert cfg.compose.file == tmp_path / "compose.yml"
    assert cfg.compose.phases == [["db"], ["api", "worker"], ["web"]]
    for bad, message in (({"runtime": "k8s"}, "runtime must be release or compose"),
                         ({"rolling": {"serial": 0}}, "rolling.serial must be"),
                         ({"rolling": {"serial": "150%"}}, "rolling.serial must be"),
                         ({"canary": {"steps": [50, 10]}}, "canary.steps must be"),
                         ({"canary": {"steps": [10, 50]}}, "canary.steps must be"),
                         ({"canary": {"windw": 3}}, "did you mean 'window'"),
                         ({"compose": {"phases": [["db"], []]}}, "compose.phases must be")):
        path.write_text(yaml.safe_dump({"app": "shop", **bad}))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
