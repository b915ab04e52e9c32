"""Gate output is redacted: a failing testinfra test that prints (part of) a secret leaks
it into no artifact: JUnit XML, results JSON, run report, summary, table or step result.

The suite reads the app's ``.env`` from the host and fails on it, so pytest prints the
file's content in a truncated repr (``'SECRET_KEY=k3y...'``): half of the key, which
matching only the whole value missed.
"""

from __future__ import annotations

import io
import secrets as random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.secrets import FRAGMENT_MIN, Secret
from deploykit.verify import suite_task, verify_hosts

pytestmark = pytest.mark.lab

ENV_DIR = "/srv/dk-gate-secret"
SUITE = f'''
def test_env_has_no_secret_key(host):
    env = host.file("{ENV_DIR}/.env").content_string
    assert "SECRET_KEY" not in env, env

def test_secret_key_is_empty(host):
    env = host.file("{ENV_DIR}/.env").content_string
    key = env.split("=", 1)[1].strip()
    assert key == ""
'''


@pytest.fixture
def key(lab_connection: Callable[[str], Connection]) -> Iterator[str]:
    value = "k3y-" + random.token_urlsafe(90)
    conn = lab_connection("web-1")
    conn.run(["mkdir", "-p", ENV_DIR])
    conn.put(f"SECRET_KEY={value}\n", f"{ENV_DIR}/.env")
    yield value
    conn.run(["rm", "-rf", ENV_DIR])


def _leaks(text: str, value: str) -> list[str]:
    """Pieces of ``value`` of FRAGMENT_MIN characters found in ``text``."""
    return [value[i:i + FRAGMENT_MIN] for i in range(len(value) - FRAGMENT_MIN + 1)
            if value[i:i + FRAGMENT_MIN] in text]


def test_verify_artifacts_hold_no_piece_of_a_secret(
        lab_inventory: Inventory, key: str, tmp_path: Path) -> None:
    suite = tmp_path / "test_leak.py"
    suite.write_text(SUITE)
    reports = tmp_path / "runs"
    result = verify_hosts([lab_inventory.host("web-1")], suite, report_dir=reports,
                          run_id="leak", secrets=[Secret(key)])
    assert not result.ok
    texts = {p.name: p.read_text() for p in reports.iterdir()}
    assert set(texts) == {"leak.junit.xml", "leak.verify.json", "leak.json"}
    assert "SECRET_KEY" in texts["leak.junit.xml"]  # the failure is there, the key is not
    console = io.StringIO()
    Console(file=console, width=200).print(result.table())
    texts["summary"] = result.summary()
    texts["table"] = console.getvalue()
    for name, text in texts.items():
        assert _leaks(text, key) == [], name


def test_the_gate_step_redacts_the_connection_secrets(
        lab_connection: Callable[[str], Connection], key: str, tmp_path: Path) -> None:
    suite = tmp_path / "test_leak.py"
    suite.write_text(SUITE)
    conn = lab_connection("web-1")
    conn.secrets.add(Secret(key))  # what uploading the .env as a Secret registers
    step = suite_task(suite, name="verify: post_switch")
    outcome = step.run(conn)
    assert outcome.failed
    assert _leaks(outcome.message, key) == []
    assert _leaks(repr(outcome.data), key) == []
    combined = step.combined()
    assert combined is not None
    combined.write(tmp_path / "g.junit.xml", tmp_path / "g.json")
    for path in (tmp_path / "g.junit.xml", tmp_path / "g.json"):
        assert _leaks(path.read_text(), key) == [], path.name
