"""Secret sources without hosts: ${env:..}, ${file:..} (mode 0600 or stricter) and
${cmd:..} (no shell, output never echoed), resolved lazily; `invoke config --show`'s
effective configuration with every secret redacted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit.config import effective_config, is_reference, parse_config, render_env
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.secrets import LazySecret, Secret, redact, resolve_references, resolve_source

SENTINEL = "sentinel-9f1c2b7e-not-for-logs"


def write_secret(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_env_source_and_a_missing_variable_names_key_and_source(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DK_SRC_TOKEN", SENTINEL)
    assert resolve_source("env:DK_SRC_TOKEN", tmp_path, "x") == SENTINEL
    monkeypatch.delenv("DK_SRC_MISSING", raising=False)
    with pytest.raises(ConfigError, match=r"^deploykit.yml: env.API_KEY: environment variable "
                                          r"DK_SRC_MISSING is not set \(or empty\) \(source "
                                          r"\$\{env:DK_SRC_MISSING\}\)$"):
        resolve_source("env:DK_SRC_MISSING", tmp_path, "deploykit.yml: env.API_KEY")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_file_source_private_enough(tmp_path: Path, mode: int) -> None:
    write_secret(tmp_path / "token", f"{SENTINEL}\n", mode)
    assert resolve_source("file:token", tmp_path, "k") == SENTINEL


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_file_source_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "token", SENTINEL, mode)
    with pytest.raises(ConfigError) as caught:
        resolve_source("file:token", tmp_path, "lab.yml: db-1.postgres_password")
    assert str(caught.value) == (
        f"lab.yml: db-1.postgres_password: secret file {path} has mode {mode:04o}: group or "
        f"others may read it; a secret file must be 0600 or stricter (chmod 600 {path})")


def test_cmd_source_runs_without_a_shell_and_strips(tmp_path: Path) -> None:
    assert resolve_source(f"cmd:printf '  %s\\n\\n' {SENTINEL}", tmp_path, "k") == SENTINEL
    # no shell: $HOME and the pipe reach echo as words
    assert resolve_source("cmd:echo $HOME | x", tmp_path, "k") == "$HOME | x"


def test_cmd_source_failure_does_not_echo_its_output(tmp_path: Path) -> None:
    script = "printf LEAK%s 42; printf LEAK%s 43 >&2; exit 3"
    with pytest.raises(ConfigError) as caught:
        resolve_source(f"cmd:sh -c '{script}'", tmp_path, "deploykit.yml: env.K")
    text = str(caught.value)
    assert text == (f"deploykit.yml: env.K: secret command `sh -c '{script}'` (source "
                    f"${{cmd:sh -c '{script}'}}) exited with code 3 (its output is not shown: "
                    f"it may hold the secret; run the command yourself to see why)")
    assert "LEAK42" not in text and "LEAK43" not in text
    with pytest.raises(ConfigError, match=r"env.K: secret command `no-such-pass-cli x` \(source "
                                          r"\$\{cmd:no-such-pass-cli x\}\): no-such-pass-cli "
                                          r"not found"):
        resolve_source("cmd:no-such-pass-cli x", tmp_path, "deploykit.yml: env.K")
    with pytest.raises(ConfigError, match="printed nothing"):
        resolve_source("cmd:true", tmp_path, "k")


def test_cmd_source_runs_once_and_only_when_revealed(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    value = f"${{cmd:sh -c 'echo x >> {counter}; printf %s-%s sentinel 9f1c'}}"
    resolved = resolve_references({"password": value, "port": 22, "plain": "a $ b",
                                   "list": ["${env:HOME}"]}, tmp_path, "inv.yml: web-1")
    secret = resolved["password"]
    assert isinstance(secret, LazySecret) and not secret.resolved
    assert resolved["port"] == 22 and resolved["plain"] == "a $ b"
    assert isinstance(resolved["list"][0], LazySecret)
    assert str(secret) == "********" and repr(secret) == f"LazySecret({value})"
    assert redact("x sentinel-9f1c", [secret]) == "x sentinel-9f1c"  # not run to redact
    assert not counter.exists()
    assert secret.reveal() == "sentinel-9f1c" and secret.reveal() == "sentinel-9f1c"
    assert Secret(secret).reveal() == "sentinel-9f1c"
    assert redact("x sentinel-9f1c", [secret]) == "x ********"
    assert counter.read_text() == "x\n"


def test_lazy_env_secret_is_redacted_before_use_and_fails_where_needed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DK_SRC_TOKEN", SENTINEL)
    lazy = resolve_references("${env:DK_SRC_TOKEN}", tmp_path, "inv.yml: db-1.password")
    assert redact(f"echo {SENTINEL}", [lazy]) == "echo ********"
    missing = resolve_references("${env:DK_SRC_NOPE}", tmp_path, "inv.yml: db-1.password")
    assert bool(missing) and redact("text", [missing]) == "text"  # nothing to mask, no error
    with pytest.raises(ConfigError, match=r"inv.yml: db-1.password: environment variable "
                                          r"DK_SRC_NOPE is not set"):
        missing.reveal()


def parse(tmp_path: Path, **data: Any) -> Any:
    return parse_config({"app": "shop", **data}, tmp_path / "deploykit.yml")


def test_config_references_use_every_source(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_reference("${cmd:pass show shop/token}")
    monkeypatch.setenv("DK_SRC_TOKEN", SENTINEL)
    write_secret(tmp_path / "key", "from-a-file\n", 0o600)
    cfg = parse(tmp_path, db=None, env={"A": "${env:DK_SRC_TOKEN}", "B": "${file:key}",
                                        "C": f"${{cmd:{sys.executable} -c print(42)}}"},
                preflight={"ci_token": "${cmd:printf tok}"})
    env = render_env(cfg, None)
    assert env.text.reveal() == f"A={SENTINEL}\nB=from-a-file\nC=42\n"
    assert cfg.secret(cfg.preflight.ci_token, "preflight.ci_token") == Secret("tok")


def test_effective_config_redacts_and_names_missing_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DK_SRC_TOKEN", SENTINEL)
    monkeypatch.delenv("DK_SRC_NOPE", raising=False)
    cfg = parse(tmp_path, db=None, env={"A": "${env:DK_SRC_TOKEN}", "B": "plain",
                                        "C": "${env:DK_SRC_NOPE}"},
                notify={"slack_webhook_url": "${env:DK_SRC_TOKEN}"})
    host = Host("web-1", "198.18.0.2", password=Secret(SENTINEL), vars={
        "api": resolve_references("${env:DK_SRC_TOKEN}", tmp_path, "inv: web-1.api"),
        "weight": 3})
    data, problems = effective_config(cfg, None, [host])
    text = yaml.safe_dump(data)
    assert SENTINEL not in text
    assert data["env"] == {"A": "******** (${env:DK_SRC_TOKEN})", "B": "plain",
                           "C": "MISSING (${env:DK_SRC_NOPE})"}
    assert data["notify"]["slack_webhook_url"] == "******** (${env:DK_SRC_TOKEN})"
    assert data["hosts"]["web-1"]["password"] == "********"
    assert data["hosts"]["web-1"]["vars"] == {"api": "******** (${env:DK_SRC_TOKEN})",
                                             "weight": 3}
    assert data["keep_releases"] == 5 and data["hooks_dir"] == str(tmp_path / "hooks")
    assert problems == ["deploykit.yml: env.C: environment variable DK_SRC_NOPE is not set "
                        "(or empty) (source ${env:DK_SRC_NOPE})"]


def test_effective_config_redacts_plain_password_vars_everywhere(tmp_path: Path) -> None:
    """issue 21 item 10: ``postgres_password`` as a plain inventory var (deploykit.pg reads
    it) is shown neither under the host's vars nor inside ``${db.postgres_password}``."""
    plain = "plain-pg-pw-Zk41-not-for-show"
    db = Host("db-1", "198.18.0.3", groups=("db",), vars={
        "postgres_password": plain, "postgres_user": "app", "api_token": plain + "2",
        "redis_port": 6379})
    cfg = parse(tmp_path, database={"name": "shop"}, env={"PGPASS": "${db.postgres_password}",
                               "URL": "${database_url}", "USER": "${db.postgres_user}"})
    data, problems = effective_config(cfg, db, [db])
    text = yaml.safe_dump(data)
    assert plain not in text and problems == []
    assert data["env"]["PGPASS"] == "******** (${db.postgres_password})"
    assert data["env"]["USER"] == "app"
    assert data["hosts"]["db-1"]["vars"] == {
        "postgres_password": "********", "postgres_user": "app", "api_token": "********",
        "redis_port": 6379}
