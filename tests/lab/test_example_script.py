"""examples/plain_script.py: deploykit used from a plain script, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab


def test_plain_script_applies_then_changes_nothing(
    clean_lab: Lab, lab_host: Callable[[str], object], project_root: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "lab.yml"
    inventory.write_text(yaml.safe_dump(clean_lab.inventory()))

    def run(*extra: str) -> dict[str, object]:
        report = tmp_path / "report.json"
        proc = subprocess.run([sys.executable, str(project_root / "examples/plain_script.py"),
                               str(inventory), "web", "--json", str(report), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return json.loads(report.read_text())  # type: ignore[no-any-return]

    def statuses(report: dict[str, object], host: str) -> list[str]:
        return [r["status"] for r in report["hosts"][host]["results"]]  # type: ignore[index]

    checked = run("--check")
    assert statuses(checked, "web-1") == ["changed"] * 4
    assert not lab_host("web-1").file("/srv/hello").exists  # type: ignore[attr-defined]

    first = run()
    assert statuses(first, "web-2") == ["changed"] * 4
    motd = lab_host("web-2").file("/srv/hello/motd")  # type: ignore[attr-defined]
    assert motd.content_string == "Hello from web-2 (web)\n"
    assert lab_host("web-2").file("/srv/hello/settings.ini").content_string == "workers=4\n"  # type: ignore[attr-defined]

    second = run()
    assert statuses(second, "web-1") == ["ok"] * 4
    assert statuses(second, "web-2") == ["ok"] * 4


def test_plain_script_reports_a_bad_selector_without_traceback(
    lab: Lab, project_root: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "lab.yml"
    inventory.write_text(yaml.safe_dump(lab.inventory()))
    proc = subprocess.run([sys.executable, str(project_root / "examples/plain_script.py"),
                           str(inventory), "wbe"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "selector 'wbe' matches no host or group" in proc.stderr
    assert "Traceback" not in proc.stderr
