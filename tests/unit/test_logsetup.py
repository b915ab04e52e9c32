"""configure_logging in a plain script: $DEPLOYKIT_LOG_LEVEL, one handler, secrets redacted."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import deploykit
from deploykit.errors import ConfigError
from deploykit.logsetup import RedactingHandler
from deploykit.secrets import Secret

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, socket
import deploykit
from deploykit import Secret
from deploykit.tasks import notify

token = Secret("hunter2-token")
deploykit.configure_logging(secrets=[token])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
hook = notify.slack(Secret(f"http://127.0.0.1:{port}/services/T0/B0/s3cr3tpath"))
notify.send([hook], notify.DeployEvent("start", "d1", app="shop"), timeout=2)
logging.getLogger("deploykit.script").debug("using token %s and hunter2-token", token)
"""


def run_script(level: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYKIT_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    if level is not None:
        env["DEPLOYKIT_LOG_LEVEL"] = level
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_a_plain_script_sees_warnings_redacted() -> None:
    proc = run_script(None)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING deploykit.notify: notification start of deploy d1 to slack" in proc.stderr
    assert "s3cr3tpath" not in proc.stderr and "********" in proc.stderr
    assert "deploykit.script" not in proc.stderr  # DEBUG is below the default WARNING


def test_deploykit_log_level_debug_shows_more_still_redacted() -> None:
    proc = run_script("debug")
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG deploykit.script: using token ******** and ********" in proc.stderr
    assert "hunter2" not in proc.stderr


def test_a_bad_level_is_a_config_error() -> None:
    proc = run_script("loud")
    assert proc.returncode != 0
    assert "ConfigError: $DEPLOYKIT_LOG_LEVEL: 'loud' is not one of debug" in proc.stderr


@pytest.fixture
def clean_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("deploykit")
    before, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = before
    logger.setLevel(level)


def test_calling_it_again_adjusts_the_one_handler(clean_logger: logging.Logger) -> None:
    out = io.StringIO()
    first = deploykit.configure_logging("warning", stream=out)
    second = deploykit.configure_logging("info", secrets=[Secret("pw-42")])
    assert first is second
    assert [h for h in clean_logger.handlers if isinstance(h, RedactingHandler)] == [first]
    logging.getLogger("deploykit.x").info("password pw-42")
    assert out.getvalue().endswith("INFO deploykit.x: password ********\n")
    with pytest.raises(ConfigError):
        deploykit.configure_logging("chatty")
