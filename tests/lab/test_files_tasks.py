"""File tasks over real SSH on the lab: applied twice, checked with testinfra.

Every task is run in check mode first (nothing written, a diff reported), then
applied twice: ``changed`` then ``ok``, and the second run sends no write
command (the connection's log proves it). End states are read back with
testinfra over a separate connection. Each test works in its own directory
under /srv on web-1, removed afterwards, and checks that no shell
metacharacter ever ran (/tmp/pwned never appears).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploykit.connection import Connection
from deploykit.errors import RemoteCommandError
from deploykit.inventory import Inventory
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.task import UndoStack
from deploykit.tasks import files
from deploykit.testing.idempotence import assert_check_mode as check
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.idempotence import writes

pytestmark = pytest.mark.lab

HOST = "web-1"
PWNED = "'; touch /tmp/pwned #"


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    """A fresh connection per test, so that its log holds only this test's commands."""
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture
def work(conn: Connection, host: Any) -> Iterator[str]:
    """A new empty directory under /srv, removed after the test."""
    path = f"/srv/dkf-files-{uuid.uuid4().hex[:8]}"
    conn.run(["mkdir", "--", path])
    yield path
    conn.run(["rm", "-rf", "--", path])
    assert not host.file("/tmp/pwned").exists








# -- directory ---------------------------------------------------------------


def test_directory(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/a/b"
    task = files.directory(path, mode=0o750, owner="www-data", group="nogroup",
                           recursive=True)
    assert check(conn, task).diff == ("state: absent -> directory\nmode: (none) -> 0750\n"
                                      "owner: (none) -> www-data\ngroup: (none) -> nogroup")
    assert not host.file(f"{work}/a").exists
    apply_twice(conn, task)
    made = host.file(path)
    assert made.is_directory and made.mode == 0o750
    assert (made.user, made.group) == ("www-data", "nogroup")

    narrower = files.directory(path, mode="0700", owner="33")
    assert check(conn, narrower).diff == "mode: 0750 -> 0700"
    assert apply_twice(conn, narrower).diff == "mode: 0750 -> 0700"
    assert host.file(path).mode == 0o700


def test_directory_without_recursive_needs_the_parent(conn: Connection, host: Any,
                                                      work: str) -> None:
    result = files.directory(f"{work}/missing/child").run(conn)
    assert result.status is Status.FAILED
    assert "mkdir" in result.message and "No such file or directory" in result.message
    assert not host.file(f"{work}/missing").exists


def test_directory_undo_removes_what_it_created(conn: Connection, host: Any, work: str) -> None:
    undo = UndoStack()
    apply_twice(conn, files.directory(f"{work}/new"), undo)
    assert host.file(f"{work}/new").is_directory
    assert undo.unwind(conn) == ([f"remove directory {work}/new"], [])
    assert not host.file(f"{work}/new").exists


# -- file --------------------------------------------------------------------


def test_file_create_then_change(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/app.ini"
    task = files.file(path, "[app]\nport = 80\n", mode="0640", group="www-data")
    assert check(conn, task).diff.splitlines()[1:] == [
        "--- /dev/null", f"+++ {path}", "@@ -0,0 +1,2 @@", "+[app]", "+port = 80",
        "mode: (none) -> 0640", "group: (none) -> www-data"]
    assert not host.file(path).exists
    apply_twice(conn, task)
    on_host = host.file(path)
    assert on_host.content_string == "[app]\nport = 80\n"
    assert (on_host.mode, on_host.user, on_host.group) == (0o640, "root", "www-data")

    changed = files.file(path, "[app]\nport = 8000\n")
    diff_lines = check(conn, changed).diff.splitlines()
    assert diff_lines[1:] == [f"--- {path}", f"+++ {path}", "@@ -1,2 +1,2 @@", " [app]",
                              "-port = 80", "+port = 8000"]
    assert host.file(path).content_string == "[app]\nport = 80\n"
    apply_twice(conn, changed)
    assert host.file(path).content_string == "[app]\nport = 8000\n"
    # mode and group not given: kept from the file that was replaced
    assert (host.file(path).mode, host.file(path).group) == (0o640, "www-data")


def test_file_undo_restores_content_mode_and_owner(conn: Connection, host: Any,
                                                   work: str) -> None:
    path = f"{work}/config"
    conn.put("old\n", path, mode=0o604, owner="nobody", group="nogroup")
    undo = UndoStack()
    apply_twice(conn, files.file(path, b"new\n", mode=0o600, owner="root"), undo)
    assert (host.file(path).content_string, host.file(path).mode) == ("new\n", 0o600)
    assert undo.unwind(conn) == ([f"restore {path}"], [])
    restored = host.file(path)
    assert restored.content_string == "old\n"
    assert (restored.mode, restored.user, restored.group) == (0o604, "nobody", "nogroup")


def test_file_undo_of_a_created_file_removes_it(conn: Connection, host: Any, work: str) -> None:
    undo = UndoStack()
    apply_twice(conn, files.file(f"{work}/new", "x"), undo)
    assert undo.unwind(conn) == ([f"remove {work}/new"], [])
    assert not host.file(f"{work}/new").exists


def test_file_mode_only_change_sends_no_content(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/script"
    conn.put("#!/bin/sh\n", path, mode=0o644)
    mark = len(conn.log)
    result = apply_twice(conn, files.file(path, "#!/bin/sh\n", mode=0o755))
    assert result.diff == "mode: 0644 -> 0755"
    (write,) = writes(conn, mark)  # the chmod, and the re-probe in the same round trip
    assert write.startswith(f"( chmod 755 -- {path}\n)")
    assert "cat >" not in write
    assert host.file(path).mode == 0o755


def test_secret_content_stays_out_of_results_and_log(conn: Connection, host: Any,
                                                     work: str) -> None:
    path = f"{work}/db.password"
    value = "s3cr3t-" + uuid.uuid4().hex
    task = files.file(path, Secret(value), mode=0o600)
    checked = check(conn, task)
    first = apply_twice(conn, task)
    for result in (checked, first):
        assert result.diff == ("content: (none) -> (secret)\n(secret content changed)\n"
                               "mode: (none) -> 0600")
    rotated = files.file(path, Secret(value + "-2"))
    second = apply_twice(conn, rotated)
    assert second.diff == "content: (secret) -> (secret)\n(secret content changed)"
    assert host.file(path).content_string == value + "-2"
    for result in (checked, first, second):
        assert value not in result.diff + result.message
    assert all(value not in entry.command for entry in conn.log)


# -- injection: shell metacharacters land literally ------------------------


def test_metacharacters_land_literally(conn: Connection, host: Any, work: str,
                                       tmp_path: Path) -> None:
    evil_dir = f"{work}/{PWNED}"  # three nested directories: "'; touch ", "tmp", "pwned #"
    evil_file = f"{work}/{PWNED}.txt"  # the file "pwned #.txt" in "'; touch /tmp"
    apply_twice(conn, files.directory(evil_dir, recursive=True))
    apply_twice(conn, files.file(evil_file, PWNED + "\n", mode=0o600))
    apply_twice(conn, files.line_in_file(evil_file, f"x {PWNED}", insert_before="BOF"))
    apply_twice(conn, files.symlink(f"{work}/link", PWNED))
    apply_twice(conn, files.template(f"{work}/t", template_string="{{ v }}", vars={"v": PWNED}))
    local = tmp_path / "local"
    local.write_text(PWNED)
    apply_twice(conn, files.copy(f"{evil_dir}/copied", local))

    assert host.file(f"{work}/'; touch /tmp/pwned #").is_directory
    assert host.file(f"{work}/'; touch /tmp/pwned #.txt").content_string == \
        f"x {PWNED}\n{PWNED}\n"
    assert conn.run(["readlink", "--", f"{work}/link"]).stdout == PWNED + "\n"
    assert host.file(f"{work}/t").content_string == PWNED
    assert host.file(f"{evil_dir}/copied").content_string == PWNED
    apply_twice(conn, files.absent(f"{work}/'; touch "))
    assert host.check_output(f"ls -A {work}") == "link\nt"
    assert not host.file("/tmp/pwned").exists


# -- template ----------------------------------------------------------------


def test_template_from_file_with_host_vars(conn: Connection, host: Any, work: str,
                                           tmp_path: Path, lab_inventory: Inventory) -> None:
    source = tmp_path / "app.ini.j2"
    source.write_text("[app]\nroles = {{ roles | join(',') }}\nport = {{ port }}\n")
    path = f"{work}/app.ini"
    task = files.template(path, source, vars={"port": 8000}, mode=0o644)
    roles = ",".join(lab_inventory.host(HOST).vars["roles"])
    assert check(conn, task).diff.endswith(f"+[app]\n+roles = {roles}\n+port = 8000\n"
                                           "mode: (none) -> 0644")
    apply_twice(conn, task)
    assert host.file(path).content_string == f"[app]\nroles = {roles}\nport = 8000\n"
    overridden = files.template(path, source, vars={"port": 8001, "roles": ["x", "y"]})
    assert apply_twice(conn, overridden).diff.endswith(
        f"-roles = {roles}\n-port = 8000\n+roles = x,y\n+port = 8001")
    assert host.file(path).content_string == "[app]\nroles = x,y\nport = 8001\n"


def test_template_missing_variable_fails_and_writes_nothing(conn: Connection, host: Any,
                                                            work: str, tmp_path: Path) -> None:
    source = tmp_path / "site.conf.j2"
    source.write_text("server_name {{ server_name }};\nlisten {{ listen_port }};\n")
    mark = len(conn.log)
    result = files.template(f"{work}/site.conf", source,
                            vars={"server_name": "shop"}).run(conn)
    assert result.status is Status.FAILED
    assert result.message == (f"template {source}:2: undefined variable: "
                              "'listen_port' is undefined")
    assert writes(conn, mark) == []
    assert not host.file(f"{work}/site.conf").exists


# -- line_in_file ------------------------------------------------------------


def test_line_in_file(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/sshd_config"
    conn.put("Port 22\n#PermitRootLogin yes\nUsePAM yes\n", path, mode=0o600)
    task = files.line_in_file(path, "PermitRootLogin no", regexp=r"^#?PermitRootLogin")
    assert check(conn, task).diff.splitlines()[1:] == [
        f"--- {path}", f"+++ {path}", "@@ -1,3 +1,3 @@", " Port 22",
        "-#PermitRootLogin yes", "+PermitRootLogin no", " UsePAM yes"]
    assert host.file(path).content_string == "Port 22\n#PermitRootLogin yes\nUsePAM yes\n"
    apply_twice(conn, task)
    apply_twice(conn, files.line_in_file(path, "AddressFamily inet", insert_after="^Port"))
    apply_twice(conn, files.line_in_file(path, "UsePAM yes", state="absent"))
    on_host = host.file(path)
    assert on_host.content_string == "Port 22\nAddressFamily inet\nPermitRootLogin no\n"
    assert on_host.mode == 0o600  # kept through the atomic rewrites


def test_line_in_file_create_and_undo(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/hosts"
    undo = UndoStack()
    apply_twice(conn, files.line_in_file(path, "10.0.0.5 db", create=True, mode=0o644), undo)
    assert host.file(path).content_string == "10.0.0.5 db\n"
    apply_twice(conn, files.line_in_file(path, "10.0.0.6 db", regexp=r"\sdb$"), undo)
    assert host.file(path).content_string == "10.0.0.6 db\n"
    assert undo.unwind(conn) == ([f"restore {path}", f"remove {path}"], [])
    assert not host.file(path).exists
    missing = files.line_in_file(path, "x").run(conn)
    assert missing.status is Status.FAILED
    assert missing.message == f"{path}: does not exist (create=True creates it)"


# -- symlink -----------------------------------------------------------------


def test_symlink_switch_and_undo(conn: Connection, host: Any, work: str) -> None:
    link = f"{work}/current"
    conn.run(["mkdir", "--", f"{work}/v1", f"{work}/v2"])
    task = files.symlink(link, f"{work}/v1")
    assert check(conn, task).diff == f"state: absent -> link to {work}/v1"
    apply_twice(conn, task)
    assert host.file(link).is_symlink and host.file(link).linked_to == f"{work}/v1"
    undo = UndoStack()
    switch = files.symlink(link, "v2")  # relative targets are stored as given
    assert check(conn, switch).diff == f"target: {work}/v1 -> v2"
    apply_twice(conn, switch, undo)
    assert host.file(link).linked_to == f"{work}/v2"
    assert conn.run(["readlink", "--", link]).stdout == "v2\n"
    assert undo.unwind(conn) == ([f"point {link} back at {work}/v1"], [])
    assert host.file(link).linked_to == f"{work}/v1"
    assert host.check_output(f"ls -A {work}") == "current\nv1\nv2"  # no temporary link left


def test_symlink_refuses_a_file_unless_forced(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/current"
    conn.put("a file\n", path, mode=0o640)
    refused = files.symlink(path, "/etc/hostname").run(conn)
    assert refused.status is Status.FAILED
    assert refused.message == f"{path}: exists and is a regular file (force=True replaces it)"
    undo = UndoStack()
    apply_twice(conn, files.symlink(path, "/etc/hostname", force=True), undo)
    assert host.file(path).is_symlink
    undo.unwind(conn)
    assert not host.file(path).is_symlink
    assert (host.file(path).content_string, host.file(path).mode) == ("a file\n", 0o640)


# -- copy --------------------------------------------------------------------


def test_copy(conn: Connection, host: Any, work: str, tmp_path: Path) -> None:
    local = tmp_path / "app.bin"
    payload = bytes(range(256)) * 64
    local.write_bytes(payload)
    path = f"{work}/app.bin"
    task = files.copy(path, local, mode=0o755, owner="www-data")
    assert "(no diff: binary content; 0 -> 16384 bytes)" in check(conn, task).diff
    apply_twice(conn, task)
    assert host.file(path).sha256sum == hashlib.sha256(payload).hexdigest()
    assert (host.file(path).mode, host.file(path).user) == (0o755, "www-data")
    local.write_bytes(payload + b"v2")
    assert "16384 -> 16386 bytes" in apply_twice(conn, task).diff
    assert host.file(path).size == 16386


# -- absent ------------------------------------------------------------------


def test_absent_file_and_undo(conn: Connection, host: Any, work: str) -> None:
    path = f"{work}/old.conf"
    conn.put("keep me\n", path, mode=0o640, group="www-data")
    task = files.absent(path)
    assert check(conn, task).diff == "state: file -> absent"
    assert host.file(path).exists
    undo = UndoStack()
    apply_twice(conn, task, undo)
    assert not host.file(path).exists
    assert undo.unwind(conn) == ([f"restore {path}"], [])
    restored = host.file(path)
    assert (restored.content_string, restored.mode, restored.group) == ("keep me\n", 0o640,
                                                                        "www-data")


def test_absent_directory_is_removed_and_not_restorable(conn: Connection, host: Any,
                                                        work: str) -> None:
    tree = f"{work}/tree"
    conn.run(f"mkdir -p {tree}/a/b && echo x > {tree}/a/b/f && ln -s /etc {tree}/etc")
    undo = UndoStack()
    assert apply_twice(conn, files.absent(tree), undo).diff == "state: directory -> absent"
    assert not host.file(tree).exists
    assert host.file("/etc/hostname").exists  # the link was removed, not what it pointed to
    undone, failed = undo.unwind(conn)
    assert undone == []
    assert failed == [f"restore {tree}: {tree} was a directory; removed directories and "
                      "special files cannot be restored"]


def test_absent_link_is_recreated_by_undo(conn: Connection, host: Any, work: str) -> None:
    link = f"{work}/l"
    conn.run(["ln", "-s", "--", "somewhere else", link])
    undo = UndoStack()
    assert apply_twice(conn, files.absent(link), undo).diff == "state: link -> absent"
    undo.unwind(conn)
    assert conn.run(["readlink", "--", link]).stdout == "somewhere else\n"


def test_stream_yields_all_output_up_to_eof_and_raises_on_failure(conn: Connection,
                                                                  work: str) -> None:
    # every byte of a large output, read slowly (as when it is uploaded to another host
    # meanwhile), up to the command's EOF; then its exit status
    size = 8 * 1024 * 1024
    for _ in range(3):
        got = bytearray()
        for chunk in conn.stream(f"head -c {size} /dev/zero"):
            got += chunk
            time.sleep(0.002)
        assert len(got) == size and not got.strip(b"\0")
    assert conn.log[-1].write is False
    with pytest.raises(RemoteCommandError, match=r"exit code 3: .*\nboom"):
        b"".join(conn.stream("echo partial; echo boom >&2; exit 3"))
