"""File tasks without hosts: probe output in, facts and plans out.

Recorded probe lines (what :func:`deploykit.facts.path_script` prints on a host)
go through ``task.parse`` and ``task.plan`` with a fake connection that holds
the host's vars and file contents and refuses any command, in the style of
pyinfra's ``tests/operations/*.json``. The probe snippets themselves are also
run with the local ``sh`` against a temporary directory.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest

from deploykit import facts
from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.facts import ABSENT, PathFacts
from deploykit.inventory import Host
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.task import Plan, Task
from deploykit.tasks import files

PWNED = "'; touch /tmp/pwned #"
P = "/srv/app/app.ini"


def FakeHost(name: str = "web-1", vars: dict[str, Any] | None = None) -> Host:
    """A real inventory Host (a plain value); plan() only reads its name and vars."""
    return Host(name=name, address="192.0.2.1", vars=vars or {}, groups=("web",))


class FakeConnection:
    """Just enough of a Connection for plan(): host vars, read-only get(), no commands."""

    def __init__(self, contents: dict[str, bytes] | None = None,
                 host_vars: dict[str, Any] | None = None) -> None:
        self.host = FakeHost(vars=host_vars or {})
        self.name = self.host.name
        self.contents = contents or {}
        self.gets: list[str] = []
        self.secrets: set[Secret] = set()

    def get(self, path: str) -> bytes:
        self.gets.append(path)
        return self.contents[path]

    def run(self, *args: object, **kwargs: object) -> object:
        raise AssertionError(f"a plan must not run commands: {args}")


def fake(contents: dict[str, bytes] | None = None, **host_vars: Any) -> Any:
    return FakeConnection(contents, host_vars)


def file_line(content: bytes, mode: str = "644", owner: str = "root", group: str = "root",
              uid: int = 0, gid: int = 0) -> str:
    """The probe line of a regular file holding ``content``."""
    digest = hashlib.sha256(content).hexdigest()
    return f"file {mode} {owner} {group} {uid} {gid} {len(content)}\nsha256 {digest}  -\n"


def plan_of(task: Task, output: str, conn: Any = None) -> Plan:
    return task.plan(cast(Connection, conn or fake()), task.parse(output))


# -- facts: parsing and the snippets themselves ------------------------------


def test_parse_file_line() -> None:
    line = file_line(b"hello\n", mode="640", owner="www-data", group="adm", uid=33, gid=4)
    assert facts.parse_path(line) == PathFacts(
        exists=True, type="file", mode=0o640, owner="www-data", group="adm", uid=33, gid=4,
        size=6, sha256=hashlib.sha256(b"hello\n").hexdigest(), link_target=None)


def test_parse_link_line_decodes_any_target() -> None:
    target = base64.b64encode(f"/srv/{PWNED}\nx".encode()).decode()
    parsed = facts.parse_path(f"link 777 root root 0 0 27\ntarget {target}\n")
    assert parsed.type == "link" and parsed.link_target == f"/srv/{PWNED}\nx"
    assert parsed.sha256 is None and parsed.mode == 0o777


def test_parse_directory_and_absent() -> None:
    parsed = facts.parse_path("directory 2755 app app 1000 1000 4096")
    assert (parsed.type, parsed.mode, parsed.uid, parsed.sha256) == ("directory", 0o2755, 1000,
                                                                      None)
    assert facts.parse_path("absent\n") == ABSENT
    assert not ABSENT.exists and ABSENT.mode is None


@pytest.mark.parametrize("output", ["", "file 644 root root", "socket 1 2 3 4 5 6 7 8",
                                    "file 9z9 root root 0 0 1",
                                    "file 644 root root 0 0 1\nsha256 abc  -"])
def test_parse_path_rejects_what_the_snippet_cannot_print(output: str) -> None:
    with pytest.raises(TaskError, match="unexpected path probe output"):
        facts.parse_path(output)


def test_parse_content() -> None:
    assert facts.parse_content("file ...\ncontent aGk=\n") == b"hi"
    assert facts.parse_content("file ...\ncontent \n") == b""
    assert facts.parse_content("file ...\ncontent-too-large\n") is None
    assert facts.parse_content("absent\n") is None


def test_owned_by_compares_names_and_numeric_ids() -> None:
    current = facts.parse_path("file 644 www-data adm 33 4 0")
    assert current.owned_by("www-data", "adm") == (True, True)
    assert current.owned_by("33", "4") == (True, True)
    assert current.owned_by("root", None) == (False, True)
    assert ABSENT.owned_by("root", "0") == (False, False)


@pytest.mark.parametrize(("given", "expected"), [(0o644, 0o644), ("0644", 0o644), ("644", 0o644),
                                                 ("2755", 0o2755), (None, None), (0, 0)])
def test_parse_mode(given: int | str | None, expected: int | None) -> None:
    assert facts.parse_mode(given) == expected


@pytest.mark.parametrize("bad", ["u+x", "0888", 0o17777, -1])
def test_parse_mode_rejects(bad: int | str) -> None:
    with pytest.raises(ConfigError, match="mode"):
        facts.parse_mode(bad)


def sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                          timeout=10).stdout


def test_path_script_runs_in_sh_and_quotes_every_value(tmp_path: Path) -> None:
    evil = tmp_path / PWNED  # "'; touch " / "tmp" / "pwned #"
    evil.mkdir(parents=True)
    data = tmp_path / PWNED / "data"
    data.write_bytes(b"x" * 10)
    data.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to(f"../{PWNED} target")
    parsed = facts.parse_path(sh(facts.path_script(str(data))))
    assert (parsed.type, parsed.mode, parsed.size) == ("file", 0o640, 10)
    assert parsed.sha256 == hashlib.sha256(b"x" * 10).hexdigest()
    assert facts.parse_path(sh(facts.path_script(str(data), checksum=False))).sha256 is None
    assert facts.parse_path(sh(facts.path_script(str(evil)))).type == "directory"
    assert facts.parse_path(sh(facts.path_script(str(link)))).link_target == f"../{PWNED} target"
    assert facts.parse_path(sh(facts.path_script(str(tmp_path / "nope")))) == ABSENT
    assert not Path("/tmp/pwned").exists()


def test_content_script_prints_content_only_under_the_limit(tmp_path: Path) -> None:
    data = tmp_path / "f"
    data.write_bytes(b"a\0b\n")
    assert facts.parse_content(sh(facts.content_script(str(data), limit=4))) == b"a\0b\n"
    assert sh(facts.content_script(str(data), limit=3)) == "content-too-large\n"
    assert sh(facts.content_script(str(tmp_path / "nope"), limit=3)) == ""


def test_content_diff_forms() -> None:
    assert facts.content_diff(b"a\nb\n", b"a\nc\n", P) == (
        f"--- {P}\n+++ {P}\n@@ -1,2 +1,2 @@\n a\n-b\n+c")
    assert facts.content_diff(None, b"new\n", P).startswith(f"--- /dev/null\n+++ {P}\n")
    assert facts.content_diff(b"x", b"y", P).endswith("-x\n\\ No newline at end of file\n"
                                                      "+y\n\\ No newline at end of file")
    assert facts.content_diff(b"\0\1", b"text\n", P) == "(no diff: binary content; 2 -> 5 bytes)"
    big = b"x\n" * (facts.DIFF_LIMIT // 2 + 1)
    assert facts.content_diff(b"", big, P) == (
        f"(no diff: content larger than 256 KiB; 0 -> {len(big)} bytes)")


# -- file: recorded facts in, plan out ---------------------------------------


def test_file_absent_plans_content_with_diff_from_dev_null() -> None:
    plan = plan_of(files.file(P, "port = 80\n", mode=0o600), "absent\n")
    digest = hashlib.sha256(b"port = 80\n").hexdigest()
    assert plan.render() == (
        f"content: (none) -> 10 bytes sha256:{digest[:12]}\n"
        f"--- /dev/null\n+++ {P}\n@@ -0,0 +1 @@\n+port = 80\n"
        "mode: (none) -> 0600")


def test_identical_content_plans_nothing_and_reads_nothing() -> None:
    conn = fake()
    assert not plan_of(files.file(P, "port = 80\n", mode="0644", owner="root", group="0"),
                       file_line(b"port = 80\n"), conn)
    assert conn.gets == []


def test_mode_only_change_needs_no_content() -> None:
    conn = fake()
    plan = plan_of(files.file(P, b"port = 80\n", mode="0600"), file_line(b"port = 80\n"), conn)
    assert plan.render() == "mode: 0644 -> 0600"
    assert conn.gets == []


def test_owner_and_group_changes() -> None:
    plan = plan_of(files.file(P, "x", owner="www-data", group="www-data"), file_line(b"x"))
    assert plan.render() == "owner: root -> www-data\ngroup: root -> www-data"


def test_changed_content_fetches_the_old_content_once_for_the_diff() -> None:
    conn = fake({P: b"port = 80\nhost = a\n"})
    task = files.file(P, "port = 81\nhost = a\n")
    current = task.parse(file_line(b"port = 80\nhost = a\n"))
    plan = task.plan(cast(Connection, conn), current)
    assert plan.changes[0].diff == (f"--- {P}\n+++ {P}\n@@ -1,2 +1,2 @@\n"
                                    "-port = 80\n+port = 81\n host = a")
    assert conn.gets == [P]
    task.plan(cast(Connection, conn), current)
    assert conn.gets == [P]  # kept in the facts, which the apply step reuses for undo


def test_secret_content_never_shows_and_never_fetches_the_old() -> None:
    conn = fake({P: b"old-password"})
    task = files.file(P, Secret("hunter2"), mode=0o600)
    plan = task.plan(cast(Connection, conn), task.parse(file_line(b"old-password")))
    assert plan.render() == ("content: (secret) -> (secret)\n(secret content changed)\n"
                             "mode: 0644 -> 0600")
    assert conn.gets == []
    assert list(task.secrets) == [Secret("hunter2")]


def test_binary_or_large_content_is_not_fetched() -> None:
    conn = fake()
    plan = plan_of(files.file(P, b"\x89PNG\0"), file_line(b"text\n"), conn)
    assert plan.changes[0].diff == "(no diff: binary content; 5 -> 5 bytes)"
    big_line = f"file 644 root root 0 0 {300 * 1024}\nsha256 {'0' * 64}  -"
    plan = plan_of(files.file(P, "small\n"), big_line, conn)
    assert plan.changes[0].diff == "(no diff: content larger than 256 KiB; 307200 -> 6 bytes)"
    assert conn.gets == []


@pytest.mark.parametrize(("output", "message"), [
    ("directory 755 root root 0 0 4096", "exists and is a directory, not a regular file"),
    (f"link 777 root root 0 0 9\ntarget {base64.b64encode(b'/etc/x').decode()}",
     "is a symlink to /etc/x"),
])
def test_file_refuses_to_replace_other_types(output: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        plan_of(files.file(P, "x"), output)


# -- directory, symlink, absent ---------------------------------------------


def test_directory_plans() -> None:
    task = files.directory("/srv/app/", mode=0o750, owner="33")
    assert task.path == "/srv/app" and task.name == "files.directory /srv/app"
    assert plan_of(task, "absent").render() == (
        "state: absent -> directory\nmode: (none) -> 0750\nowner: (none) -> 33")
    assert plan_of(task, "directory 755 www-data root 33 0 4096").render() == (
        "mode: 0755 -> 0750")
    assert not plan_of(task, "directory 750 www-data root 33 0 4096")
    with pytest.raises(TaskError, match="exists and is a file, not a directory"):
        plan_of(task, file_line(b""))


def link_line(target: str) -> str:
    encoded = base64.b64encode(target.encode()).decode()
    return f"link 777 root root 0 0 {len(target)}\ntarget {encoded}"


def test_symlink_plans() -> None:
    task = files.symlink("/srv/app/current", "releases/2")
    assert plan_of(task, "absent").render() == "state: absent -> link to releases/2"
    assert plan_of(task, link_line("releases/1")).render() == "target: releases/1 -> releases/2"
    assert not plan_of(task, link_line("releases/2"))
    with pytest.raises(TaskError, match=r"regular file \(force=True replaces it\)"):
        plan_of(task, file_line(b"x"))
    forced = files.symlink("/srv/app/current", "releases/2", force=True)
    assert plan_of(forced, file_line(b"x")).render() == "state: file -> link to releases/2"
    with pytest.raises(TaskError, match="is a directory; it is never replaced"):
        plan_of(forced, "directory 755 root root 0 0 4096")


def test_absent_plans_and_refuses_root() -> None:
    assert not plan_of(files.absent("/srv/old"), "absent")
    assert plan_of(files.absent("/srv/old"), "directory 755 root root 0 0 4096").render() \
        == "state: directory -> absent"
    for bad in ["/", "//", "/srv/..", "/./"]:
        with pytest.raises(ConfigError, match="refusing to remove"):
            files.absent(bad)
    for bad in ["", "srv/old"]:
        with pytest.raises(ConfigError, match="path must be absolute"):
            files.absent(bad)


# -- line_in_file ------------------------------------------------------------

TEXT = "# sshd\nPort 22\n#PermitRootLogin yes\nPermitRootLogin no\nUsePAM yes\n"

EDITS: list[tuple[str, dict[str, Any], str]] = [
    ("regexp replaces the last match",
     {"line": "PermitRootLogin prohibit-password", "regexp": r"^#?PermitRootLogin"},
     "# sshd\nPort 22\n#PermitRootLogin yes\nPermitRootLogin prohibit-password\nUsePAM yes\n"),
    ("regexp wins over insert_after",
     {"line": "Port 2222", "regexp": r"^Port ", "insert_after": "BOF"},
     "# sshd\nPort 2222\n#PermitRootLogin yes\nPermitRootLogin no\nUsePAM yes\n"),
    ("no regexp match: appended at EOF",
     {"line": "X11Forwarding no", "regexp": r"^X11Forwarding"},
     TEXT + "X11Forwarding no\n"),
    ("insert_after the last matching line",
     {"line": "Port 2222", "insert_after": r"PermitRootLogin"},
     "# sshd\nPort 22\n#PermitRootLogin yes\nPermitRootLogin no\nPort 2222\nUsePAM yes\n"),
    ("insert_before the last matching line",
     {"line": "Port 2222", "insert_before": r"PermitRootLogin"},
     "# sshd\nPort 22\n#PermitRootLogin yes\nPort 2222\nPermitRootLogin no\nUsePAM yes\n"),
    ("insert_after BOF", {"line": "Include x", "insert_after": "BOF"}, "Include x\n" + TEXT),
    ("insert_before BOF", {"line": "Include x", "insert_before": "BOF"}, "Include x\n" + TEXT),
    ("insert_after EOF", {"line": "Include x", "insert_after": "EOF"}, TEXT + "Include x\n"),
    ("anchor matching nothing appends", {"line": "A", "insert_before": "^nothing"}, TEXT + "A\n"),
    ("present line anywhere is left alone", {"line": "Port 22", "insert_after": "BOF"}, TEXT),
    ("absent removes every regexp match",
     {"line": None, "regexp": "PermitRootLogin", "state": "absent"},
     "# sshd\nPort 22\nUsePAM yes\n"),
    ("absent by exact line", {"line": "Port 22", "state": "absent"},
     "# sshd\n#PermitRootLogin yes\nPermitRootLogin no\nUsePAM yes\n"),
    ("literal shell metacharacters", {"line": PWNED, "insert_before": "^Port"},
     f"# sshd\n{PWNED}\nPort 22\n#PermitRootLogin yes\nPermitRootLogin no\nUsePAM yes\n"),
]


@pytest.mark.parametrize(("case", "kwargs", "expected"), EDITS, ids=[e[0] for e in EDITS])
def test_edit_lines(case: str, kwargs: dict[str, Any], expected: str) -> None:
    kwargs = dict(kwargs)
    line = kwargs.pop("line")
    once = files.edit_lines(TEXT, line, **kwargs)
    assert once == expected
    assert files.edit_lines(once, line, **kwargs) == once  # a second pass changes nothing


def test_edit_lines_edges() -> None:
    assert files.edit_lines("", "a") == "a\n"
    assert files.edit_lines("last", "a") == "last\na\n"
    assert files.edit_lines("a\r\nb\r\n", "B", regexp="^b") == "a\r\nB\r\n"
    assert files.edit_lines("x=1", "x=2", regexp="^x=") == "x=2"  # no newline added or lost
    assert files.edit_lines("a\n", "z", state="absent") == "a\n"


def test_line_in_file_plan_is_a_unified_diff_from_probed_content() -> None:
    task = files.line_in_file("/etc/ssh/sshd_config", "Port 2222", regexp="^Port ")
    output = file_line(TEXT.encode()) + "content " + base64.b64encode(TEXT.encode()).decode()
    conn = fake()
    plan = plan_of(task, output, conn)
    assert plan.changes[0].diff == ("--- /etc/ssh/sshd_config\n+++ /etc/ssh/sshd_config\n"
                                    "@@ -1,5 +1,5 @@\n # sshd\n-Port 22\n+Port 2222\n"
                                    " #PermitRootLogin yes\n PermitRootLogin no\n UsePAM yes")
    assert conn.gets == []  # the probe already read the content
    same = files.line_in_file("/etc/ssh/sshd_config", "Port 22", regexp="^Port ")
    assert not plan_of(same, output)


def test_line_in_file_missing_or_too_large_file() -> None:
    with pytest.raises(TaskError, match=r"does not exist \(create=True creates it\)"):
        plan_of(files.line_in_file("/etc/x", "a"), "absent")
    assert not plan_of(files.line_in_file("/etc/x", "a", state="absent"), "absent")
    created = plan_of(files.line_in_file("/etc/x", "a", create=True, mode=0o600), "absent")
    assert created.changes[0].diff == "--- /dev/null\n+++ /etc/x\n@@ -0,0 +1 @@\n+a"
    big = f"file 644 root root 0 0 {2 * 1024 * 1024}\nsha256 {'0' * 64}  -\ncontent-too-large\n"
    with pytest.raises(TaskError, match=r"too large to edit \(2097152 bytes, limit 1024 KiB\)"):
        plan_of(files.line_in_file("/etc/x", "a"), big)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"line": None}, "line is required"),
    ({"line": "a\nb"}, "single line"),
    ({"line": "a", "regexp": "("}, "bad regular expression"),
    ({"line": "a", "insert_after": "x", "insert_before": "y"}, "not both"),
    ({"line": "a", "state": "gone"}, "state must be"),
])
def test_line_in_file_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        files.line_in_file("/etc/x", **kwargs)


# -- template ----------------------------------------------------------------


def test_template_renders_host_vars_overlaid_with_vars() -> None:
    conn = fake(app="shop", port=80)
    task = files.template(P, template_string="app={{ app }} port={{ port }}\n",
                          vars={"port": 8000})
    plan = plan_of(task, "absent", conn)
    assert plan.changes[0].diff.endswith("+app=shop port=8000")


def test_template_missing_variable_names_variable_template_and_line(tmp_path: Path) -> None:
    source = tmp_path / "app.ini.j2"
    source.write_text("[app]\nname = {{ app }}\nport = {{ port }}\n")
    task = files.template(P, source)
    with pytest.raises(TaskError) as err:
        plan_of(task, "absent", fake(app="shop"))
    assert err.value.message == f"template {source}:3: undefined variable: 'port' is undefined"
    inline = files.template(P, template_string="x={{ missing_var }}")
    result = inline.run(cast(Connection, fake()), facts={"path": ABSENT})
    assert result.status is Status.FAILED
    assert result.message == ("template <template_string>:1: undefined variable: "
                              "'missing_var' is undefined")


def test_template_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"template <template_string>:1: syntax error"):
        plan_of(files.template(P, template_string="{% if %}"), "absent")
    with pytest.raises(TaskError, match=r"nope.j2: file not found"):
        plan_of(files.template(P, tmp_path / "nope.j2"), "absent")
    adding = files.template(P, template_string="{{ port + 'x' }}", vars={"port": 80})
    result = adding.run(cast(Connection, fake()), facts={"path": ABSENT})
    assert result.status is Status.FAILED
    assert result.message.startswith("template <template_string>: TypeError: unsupported")


def test_template_with_a_secret_var_renders_it_and_hides_the_diff() -> None:
    conn = FakeConnection()
    task = files.template(P, template_string="password={{ pw }}\n", vars={"pw": Secret("s3")})
    plan = task.plan(cast(Connection, conn), {"path": ABSENT})
    assert plan.render() == "content: (none) -> (secret)\n(secret content changed)"
    assert task.desired(cast(Connection, conn), {"path": ABSENT}).data == b"password=s3\n"
    assert conn.secrets == {Secret("s3")}


def test_template_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of source"):
        files.template(P)
    with pytest.raises(ConfigError, match="exactly one of source"):
        files.template(P, "a.j2", template_string="x")


def test_copy_reads_the_local_file_and_reports_a_missing_one(tmp_path: Path) -> None:
    local = tmp_path / "app.tar"
    local.write_bytes(b"\0archive")
    plan = plan_of(files.copy(P, local), "absent")
    digest = hashlib.sha256(b"\0archive").hexdigest()
    assert plan.render() == (f"content: (none) -> 8 bytes sha256:{digest[:12]}\n"
                             "(no diff: binary content; 0 -> 8 bytes)")
    assert not plan_of(files.copy(P, local), file_line(b"\0archive"))
    with pytest.raises(TaskError, match=r"cannot read local file .*missing"):
        plan_of(files.copy(P, tmp_path / "missing"), "absent")


# -- the public functions are typed and documented -------------------------


@pytest.mark.parametrize("func", [files.directory, files.file, files.template, files.copy,
                                  files.line_in_file, files.symlink, files.absent])
def test_task_functions_are_typed_and_documented(func: Any) -> None:
    signature = inspect.signature(func)
    assert signature.return_annotation.endswith("Task")
    assert all(p.annotation is not inspect.Parameter.empty
               for p in signature.parameters.values())
    doc = inspect.getdoc(func) or ""
    for word in ("Args:", "Idempotence", "Check mode", "Undo"):
        assert word in doc, f"{func.__name__} docstring lacks {word}"
