"""Release artifacts are checked before anything unpacks them.

A tarball that changed after it was built (its SHA-256 differs) is refused, and
so is one with a member that would land outside the release: an absolute path,
a ``..`` component, a symlink or hard link pointing out, a member under a
symlink, a device or FIFO, a setuid file. Unit tests; the last one installs a
tampered artifact on the lab and proves nothing was unpacked.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from deploykit.artifacts import Artifact, build, check_members
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.tasks import releases


def tarball(*members: tuple[str, bytes, str], mode: int = 0o644) -> bytes:
    """A tar.gz of (name, type, linkname) members; files hold b"x"."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, mode
            data = b"x" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


FILE, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(("members", "expected"), [
    ([("/etc/cron.d/x", FILE, "")], "absolute"),
    ([("../../etc/passwd", FILE, "")], "'..' component"),
    ([("app/../../x", FILE, "")], "'..' component"),
    ([("link", SYM, "/etc")], "outside the release"),
    ([("link", SYM, "../../etc")], "outside the release"),
    ([("hard", LNK, "/etc/shadow")], "outside the release"),
    ([("d", SYM, "sub"), ("d/x", FILE, "")], "under a symlink"),
    ([("null", tarfile.CHRTYPE, "")], "device, FIFO"),
    ([("disk", tarfile.BLKTYPE, "")], "device, FIFO"),
    ([("pipe", tarfile.FIFOTYPE, "")], "device, FIFO"),
])
def test_unsafe_members_are_refused(members: list[tuple[str, bytes, str]],
                                    expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        check_members(tarball(*members), "evil.tar.gz")
    assert "evil.tar.gz" in str(info.value) and repr(members[-1][0]) in str(info.value)


def test_setuid_members_and_garbage_are_refused() -> None:
    with pytest.raises(ConfigError, match="setuid"):
        check_members(tarball(("bin/sh", FILE, ""), mode=0o4755), "evil.tar.gz")
    with pytest.raises(ConfigError, match=r"not a readable tar\.gz"):
        check_members(b"MZ\x90\x00 not a tarball", "evil.tar.gz")


def test_safe_members_pass() -> None:
    check_members(tarball(("app", DIR, ""), ("app/x.py", FILE, ""), ("app/l", SYM, "x.py"),
                          ("app/h", LNK, "app/x.py")), "good.tar.gz")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Artifact:
    return build(project_root / "examples" / "app", app="sampleapp", version="v1",
                 out_dir=tmp_path_factory.mktemp("sec-artifacts"),
                 wheelhouse=project_root / ".cache" / "wheelhouse")


def test_a_tampered_artifact_is_refused_before_use(artifact: Artifact, tmp_path: Path) -> None:
    assert artifact.read_verified() == artifact.path.read_bytes()
    tampered = tmp_path / artifact.path.name
    tampered.write_bytes(tarball(("VERSION", FILE, "")))
    bad = Artifact(artifact.app, artifact.version, tampered, artifact.sha256, artifact.size)
    with pytest.raises(ConfigError, match="does not match"):
        bad.read_verified()
    with pytest.raises(ConfigError, match="does not match"):
        bad.unpack_migrations(tmp_path / "migrations")
    with pytest.raises(ConfigError, match="does not match the expected"):
        Artifact.from_file(tampered, app="sampleapp", version="v1", sha256=artifact.sha256)
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(tarball(("../x", FILE, "")))
    with pytest.raises(ConfigError, match=r"'\.\.' component"):
        Artifact.from_file(evil, app="sampleapp", version="v1")


@pytest.mark.lab
def test_installing_a_tampered_artifact_unpacks_nothing(
        artifact: Artifact, tmp_path: Path,
        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-2")
    tampered = tmp_path / artifact.path.name
    tampered.write_bytes(tarball(("VERSION", FILE, ""), ("evil.sh", FILE, "")))
    bad = Artifact(artifact.app, artifact.version, tampered, artifact.sha256, artifact.size)
    root = "/srv/dk-sec-artifacts"
    try:
        result = releases.install("sampleapp", bad, root=root).run(conn)
        assert result.failed and "does not match" in result.message, result
        assert conn.run(["test", "-e", f"{root}/sampleapp/releases/v1"], check=False).failed
    finally:
        conn.run(["rm", "-rf", root])
