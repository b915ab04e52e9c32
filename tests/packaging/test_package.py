"""The package as a user installs it: sdist and wheel built, the wheel installed into a
fresh venv (no testinfra, no dev extra), and what a user runs first works there.

Marked ``packaging``: CI runs it as its own step (pip fetches the runtime dependencies
from PyPI through pip's cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "deploykit")
USER_TASKS = '''\
from invoke import Collection

from deploykit.cli import add_tasks
from deploykit.testing.labtasks import lab_collection

ns = Collection()
add_tasks(ns)
ns.add_collection(lab_collection, "lab")
'''


@dataclass(frozen=True)
class Installed:
    """A fresh venv with the built wheel installed, and the built files."""

    venv: Path
    wheel: Path
    sdist: Path
    project: Path  # an empty user project (no deploykit sources beside it)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a program of the venv in the user project, with a clean environment."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.project,
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc


def _run(argv: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=540,
                          check=False)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("package")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:  # a copy: building writes egg-info and build/ beside the sources
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)])
    wheel = next(dist.glob("deploykit-*.whl"))
    sdist = next(dist.glob("deploykit-*.tar.gz"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
          str(wheel), "pytest"])
    project = base / "project"
    project.mkdir()
    yield Installed(venv, wheel, sdist, project)


def test_the_wheel_ships_package_data(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {"deploykit/py.typed", "deploykit/testing/labhost.sh"} <= names


def test_the_sdist_ships_the_lab_host_script(installed: Installed) -> None:
    import tarfile

    with tarfile.open(installed.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert "deploykit/testing/labhost.sh" in names and "pyproject.toml" in names


def test_import_and_the_lab_host_script_load_from_the_installed_package(
    installed: Installed,
) -> None:
    out = installed.run("python", "-c", (
        "import deploykit, deploykit.testing.lab as lab; "
        "print(deploykit.__file__); print(len(lab.Lab()._host_script) > 0)"))
    path, loaded = out.stdout.split()
    assert path.startswith(str(installed.venv)) and loaded == "True"


def test_invoke_list_shows_the_whole_command_set(installed: Installed) -> None:
    (installed.project / "tasks.py").write_text(USER_TASKS)
    out = installed.run("invoke", "--list").stdout
    for command in ("deploy", "rollback", "status", "lab.up", "lab.down"):
        assert command in out.split(), out


def test_pytest_starts_without_testinfra_and_the_plugin_says_how_to_get_it(
    installed: Installed,
) -> None:
    missing = installed.run("python", "-c", "import testinfra", check=False)
    assert missing.returncode != 0  # the venv really has no testinfra
    help_text = installed.run("pytest", "--help").stdout
    assert "--inventory" in help_text and "deploykit[testinfra]" in help_text
    (installed.project / "test_plain.py").write_text("def test_one():\n    assert True\n")
    run = installed.run("pytest", "-q", "-p", "no:cacheprovider", "test_plain.py")
    assert "1 passed" in run.stdout
    used = installed.run("pytest", "-q", "-p", "no:cacheprovider", "--inventory", "x.yml",
                         "test_plain.py", check=False)
    assert used.returncode == 4  # a usage error
    assert ("--inventory needs pytest-testinfra, which is not installed; install it with: "
            "pip install 'deploykit[testinfra]'") in used.stderr
    assert "Traceback" not in used.stderr
