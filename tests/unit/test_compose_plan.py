"""Compose command lines (v2 plugin and v1 program), env files and image names."""

from __future__ import annotations

import subprocess

import pytest

from deploykit.errors import ConfigError
from deploykit.runtimes.compose import ComposeRelease
from deploykit.runtimes.compose import ComposeSpec as ComposeBlueGreen
from deploykit.secrets import Secret
from deploykit.tasks import compose


def test_v2_and_v1_command_lines() -> None:
    assert compose.command("v2", "shop-blue", ["docker-compose.yml"], "up", "-d") == [
        "docker", "compose", "--project-name", "shop-blue", "--project-directory",
        "/srv/compose/shop-blue", "--file", "/srv/compose/shop-blue/docker-compose.yml",
        "up", "-d"]
    assert compose.command("v1", "shop-blue", ["a.yml", "b.yml"], "down")[:1] == [
        "docker-compose"]
    assert compose.command("v1", "shop-blue", ["a.yml", "b.yml"], "down")[-5:] == [
        "--file", "/srv/compose/shop-blue/a.yml", "--file", "/srv/compose/shop-blue/b.yml",
        "down"]


def test_probe_carries_both_flavours_and_the_hash_query() -> None:
    script = compose.up("shop-blue", {"docker-compose.yml": "services: {}"}).probe_script()
    assert "docker compose --project-name shop-blue" in script
    assert "docker-compose --project-name shop-blue" in script
    assert "config --hash '*'" in script


@pytest.mark.parametrize("bad", ["Shop", "../x", "a b", "", "-p"])
def test_bad_project_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="compose project name"):
        compose.command("v2", bad, [])


def test_unknown_flavour_is_refused() -> None:
    with pytest.raises(ConfigError, match="v2 or v1"):
        compose.command("v3", "shop", [])  # type: ignore[arg-type]


def test_env_file_is_a_secret_and_refuses_newlines() -> None:
    text = compose.env_file({"A": "1", "TOKEN": Secret("s3cret")})
    assert str(text) == "********" and text.reveal() == "A=1\nTOKEN=s3cret\n"
    with pytest.raises(ConfigError, match="newline"):
        compose.env_file({"A": "x\ny"})
    task = compose.up("shop", {"docker-compose.yml": "x"}, {"TOKEN": Secret("s3cret")})
    assert "s3cret" not in task.probe_script() and Secret("s3cret") in task.secrets


def test_service_images_resolve_from_the_env_file() -> None:
    files = {"docker-compose.yml": b"services:\n  web: {image: '${IMAGE}'}\n"
                                  b"  db: {image: 'pg:${PG:-15}'}\n  x: {image: '$NOPE'}\n"}
    assert compose.service_images(files, compose.env_file({"IMAGE": "shop:2"})) == {
        "web": "shop:2", "db": "pg:15"}


def test_release_round_trips_and_colour_env() -> None:
    release = ComposeRelease("2.1", {"docker-compose.yml": "x"}, ("shop:2.1",),
                             {"IMAGE": "shop:2.1"})
    assert ComposeRelease.from_json(release.to_json()) == release
    plan = ComposeBlueGreen("shop", release, {"TOKEN": Secret("t")})
    assert plan.color_env("green") == {"TOKEN": Secret("t"), "IMAGE": "shop:2.1",
                                       "PORT": "8002", "COLOR": "green"}
    assert plan.repositories() == ["shop"] and plan.project("blue") == "shop-blue"
    with pytest.raises(ConfigError, match="PORT"):
        ComposeBlueGreen("shop", release, {"PORT": "1"})


@pytest.mark.parametrize(("services", "containers", "verdict"), [
    # another service's unhealthy container (a failed phase before) is not db's to wait on
    (["db"], ["db|1|running|starting", "api|2|running|unhealthy"], "waiting"),
    (["db"], ["db|1|running|healthy", "api|2|running|unhealthy"], "healthy"),
    (["db"], ["db|1|exited|none"], "failed"),
    (["db"], ["api|2|running|healthy"], "waiting"),  # db has no container yet
    (["db"], [], "waiting"),
    ([], ["api|2|running|unhealthy"], "failed"),
    ([], ["api|2|running|none", "db|1|running|healthy"], "healthy"),
])
def test_the_hosts_wait_loop_judges_only_the_listed_services(
        services: list[str], containers: list[str], verdict: str) -> None:
    awk = compose.WaitHealthyTask("stack", services)._verdict_awk()
    lines = "".join(f"ctr {c}|hash|imgid|img|/stack_x_1\n" for c in containers)
    out = subprocess.run(["sh", "-c", awk], input=lines, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == verdict
