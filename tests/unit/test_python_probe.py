"""The one-process python3 probe prints exactly what the shell snippets print (run here,
on this machine's real files: both halves are plain programs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploykit.facts import (
    FactRequest,
    content_request,
    parse_path,
    path_request,
    python_probe,
    request_script,
)

MARKER = "__deploykit_test__"


def _sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout.decode(
        "utf-8", "surrogateescape")


def _python_sections(tasks: list[tuple[int, list[FactRequest]]]) -> dict[str, str]:
    out = _sh(python_probe(MARKER, tasks))
    sections = {}
    for section in out.split(f"{MARKER} ")[1:]:
        key, _, body = section.partition("\n")
        sections[key] = body
    return sections


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "file.txt").write_text("hello\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "big").write_bytes(b"x" * 100)
    (tmp_path / "dir").mkdir()
    os.chmod(tmp_path / "dir", 0o2750)
    os.chmod(tmp_path / "file.txt", 0o600)
    (tmp_path / "link").symlink_to("target with space\nand newline")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "dir")
    (tmp_path / "dir" / "inner").write_text("x")
    return tmp_path


@pytest.mark.parametrize("name", ["file.txt", "empty", "big", "dir", "link", "fifo", "absent",
                                  "dir/inner", "linked-dir/inner", "spaced name 'q'"])
def test_python_probe_prints_what_the_shell_snippets_print(tree: Path, name: str) -> None:
    path = str(tree / name)
    requests = [path_request(path), path_request(path, checksum=False),
                content_request(path, limit=10), content_request(path, limit=1000)]
    sections = _python_sections([(7, requests)])
    assert sections["7"] == _sh(request_script(requests)) + "\n"
    parse_path(sections["7"])  # and it parses


def test_canonical_lists_the_tasks_with_no_symlink_in_their_parents(tree: Path) -> None:
    sections = _python_sections([(0, [path_request(str(tree / "dir" / "inner"))]),
                                 (1, [path_request(str(tree / "linked-dir" / "inner"))]),
                                 (2, [path_request(str(tree / "link"))])])
    assert sections["canonical"].split() == ["0", "2"]
