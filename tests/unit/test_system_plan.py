"""deploykit.tasks.system without hosts: facts in, plan out; commands as they would be sent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from deploykit.connection import CommandResult, Connection, LoggedCommand
from deploykit.errors import ConfigError, RemoteCommandError, TaskError
from deploykit.result import Status
from deploykit.secrets import Secret, redact
from deploykit.shell import Command, quote, render
from deploykit.task import UndoStack
from deploykit.tasks import system
from deploykit.tasks.system import (
    CommandTask,
    GroupTask,
    PackageTask,
    UserTask,
    parse_dpkg_status,
    parse_group_line,
    parse_passwd_line,
    version_matches,
)

PWNED = "'; touch /tmp/pwned #"


@dataclass
class FakeConnection:
    """Just enough of Connection for Task.run: answers commands from a script."""

    answer: Callable[[str], tuple[int, str, str]] = lambda cmd: (0, "", "")
    name: str = "fake-1"
    secrets: set[Secret] = field(default_factory=set)
    log: list[LoggedCommand] = field(default_factory=list)
    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def run(self, command: Command, *, write: bool = True, check: bool = True,
            sudo: bool | None = None, env: Mapping[str, str | Secret] | None = None,
            timeout: float | None = None, task: str | None = None, **_: Any) -> CommandResult:
        to_send, to_log = render(command)
        self.secrets.update(a for a in ([] if isinstance(command, str) else command)
                            if isinstance(a, Secret))
        self.secrets.update(v for v in (env or {}).values() if isinstance(v, Secret))
        self.sent.append((to_send, {k: v.reveal() if isinstance(v, Secret) else v
                                    for k, v in (env or {}).items()}))
        code, out, err = self.answer(to_send)
        self.log.append(LoggedCommand(to_log, write, code))
        if check and code:
            raise RemoteCommandError(f"command failed with exit code {code}: {to_log}",
                                     host=self.name, task=task, exit_code=code)
        return CommandResult(self.name, to_log, code, redact(out, self.secrets),
                             redact(err, self.secrets), 0.0)


def fake(answer: Callable[[str], tuple[int, str, str]] | None = None) -> Connection:
    conn = FakeConnection() if answer is None else FakeConnection(answer)
    return cast(Connection, conn)


def log_of(conn: Connection) -> list[LoggedCommand]:
    return cast(FakeConnection, conn).log


# -- command: names, quoting, guards ------------------------------------------------------


def test_list_command_is_quoted_element_wise_and_secret_redacted_in_name() -> None:
    task = system.command(["mysql", "-p", Secret("hunter2"), "-e", PWNED])
    assert task.name == "command mysql -p ******** -e ''\"'\"'; touch /tmp/pwned #'"
    assert "hunter2" not in task.name and "hunter2" not in task.display
    assert task.secrets == [Secret("hunter2")]


def test_long_or_multiline_command_is_shortened_in_the_name_only() -> None:
    task = system.command("set -e\necho " + "x" * 100)
    assert task.name == "command set -e..."
    assert task.display.endswith("x" * 100)
    long = system.command("echo " + "y" * 100)
    assert long.name == "command echo " + "y" * 55 + "..."
    assert system.command("true", name="noop").name == "noop"


def test_env_secrets_are_task_secrets_and_bad_env_names_are_refused() -> None:
    task = system.command("deploy", env={"TOKEN": Secret("s3cret"), "MODE": "fast"})
    assert task.secrets == [Secret("s3cret")]
    with pytest.raises(ConfigError, match="invalid environment variable name"):
        system.command("deploy", env={"X; rm -rf /": "1"})


@pytest.mark.parametrize("bad", ["", "   ", []])
def test_empty_command_is_refused(bad: str | list[str]) -> None:
    with pytest.raises(ConfigError, match="empty"):
        system.command(bad)


def test_guards_are_quoted_in_the_probe() -> None:
    task = system.command("true", creates=PWNED, removes="/srv/a b", unless=PWNED,
                          only_if="test -d /srv")
    lines = task.probe_script().splitlines()
    assert lines == [
        f"if [ -e {quote(PWNED)} ] || [ -L {quote(PWNED)} ]; then echo 'skip creates'; fi",
        "if [ ! -e '/srv/a b' ] && [ ! -L '/srv/a b' ]; then echo 'skip removes'; fi",
        f"if sh -c {quote(PWNED)} </dev/null >/dev/null 2>&1; then echo 'skip unless'; fi",
        "if ! sh -c 'test -d /srv' </dev/null >/dev/null 2>&1; then echo 'skip only_if'; fi",
    ]


def test_guard_output_parses_in_guard_order_ignoring_foreign_lines() -> None:
    task = system.command("true", creates="/x", unless="false")
    out = "skip unless\nother task's line\nskip creates\nskipper\n"
    assert task.parse(out) == {"skip": ["creates", "unless"]}
    assert not task.plan(fake(), task.parse(out))
    assert task.parse("") == {"skip": []}


def test_no_guard_means_a_plan_to_run_and_no_probe_round_trip() -> None:
    task = system.command(["touch", "/tmp/x"])
    conn = fake()
    facts = task.probe(conn)
    assert facts == {"skip": []} and log_of(conn) == []
    assert task.probe_script() == ":"
    assert task.plan(conn, facts).render() == "command: (none) -> touch /tmp/x"


def test_skip_reason_names_each_guard() -> None:
    task = system.command("true", creates="/a", removes="/b", unless="u", only_if="o")
    assert task.skip_reason(["creates", "only_if"]) == (
        "not run: /a exists (creates); only_if test failed: o")


# -- command: run outcomes (fake connection) -------------------------------------------------


def test_run_records_exit_code_and_output_and_is_changed() -> None:
    conn = fake(lambda cmd: (0, "done\n", ""))
    result = system.command(["echo", "done"]).run(conn)
    assert result.status is Status.CHANGED
    assert result.data == {"command": "echo done", "ran": True, "exit_code": 0,
                           "stdout": "done\n", "stderr": ""}
    assert [(e.command, e.write) for e in log_of(conn)] == [("echo done", True)]


def test_changed_when_false_makes_the_result_ok_and_registers_no_undo() -> None:
    undo = UndoStack()
    seen: list[CommandResult] = []

    def never(res: CommandResult) -> bool:
        seen.append(res)
        return False

    conn = fake(lambda cmd: (0, "same\n", ""))
    result = system.command("status", changed_when=never, undo="rollback").run(conn, undo=undo)
    assert result.status is Status.OK and result.diff == ""
    assert "changed_when" in result.message
    assert [r.stdout for r in seen] == ["same\n"]
    assert undo.actions == []


def test_changed_when_raising_fails_the_step_instead_of_the_run() -> None:
    result = system.command("status", changed_when=lambda r: 1 / 0 > 0).run(fake())
    assert result.status is Status.FAILED
    assert result.message == "changed_when raised ZeroDivisionError: division by zero"
    assert result.data["exit_code"] == 0


def test_undo_is_pushed_after_a_changing_run_and_runs_the_undo_command() -> None:
    undo = UndoStack()
    conn = fake()
    system.command("migrate up", undo=["migrate", "down"]).run(conn, undo=undo)
    assert [a.description for a in undo.actions] == ["command migrate up: undo with migrate down"]
    assert undo.unwind(conn) == (["command migrate up: undo with migrate down"], [])
    assert [e.command for e in log_of(conn)] == ["migrate up", "migrate down"]


def test_nonzero_exit_fails_with_the_exit_code_when_check() -> None:
    conn = fake(lambda cmd: (3, "", "boom\n"))
    result = system.command("false-ish").run(conn)
    assert result.status is Status.FAILED
    assert result.message == "command exited with code 3: false-ish\nboom"
    assert result.data["exit_code"] == 3 and result.data["stderr"] == "boom\n"


def test_nonzero_exit_is_only_recorded_without_check() -> None:
    result = system.command("grep -q x f", check=False).run(fake(lambda cmd: (1, "", "")))
    assert result.status is Status.CHANGED and not result.failed
    assert result.data["exit_code"] == 1


def test_check_mode_does_not_run_the_command() -> None:
    conn = fake()
    result = system.command(["rm", "-rf", "/srv/app"]).run(conn, check=True)
    assert result.status is Status.CHANGED and result.check
    assert result.message == "would run (check mode)"
    assert result.diff == "command: (none) -> rm -rf /srv/app"
    assert result.data == {"command": "rm -rf /srv/app", "ran": False}
    assert log_of(conn) == []


def test_run_in_check_mode_runs_as_a_read() -> None:
    conn = fake(lambda cmd: (0, "syntax ok\n", ""))
    result = system.command("nginx -t", run_in_check_mode=True,
                            changed_when=lambda r: False).run(conn, check=True)
    assert result.status is Status.OK and result.check and result.data["ran"] is True
    assert [(e.command, e.write) for e in log_of(conn)] == [("nginx -t", False)]


def test_guard_skip_is_ok_with_reason_and_only_a_read() -> None:
    conn = fake(lambda cmd: (0, "skip creates\n", ""))
    result = system.command("make", creates="/srv/out").run(conn)
    assert result.status is Status.OK
    assert result.message == "not run: /srv/out exists (creates)"
    assert result.data == {"command": "make", "ran": False, "skipped_by": ["creates"]}
    assert [e.write for e in log_of(conn)] == [False]


def test_secret_argument_and_env_never_reach_the_result() -> None:
    token = Secret("tok-9f8e7d")
    conn = fake(lambda cmd: (5, "echo tok-9f8e7d\n", "bad token tok-9f8e7d\n"))
    result = system.command(["login", token], env={"T": token}).run(conn)
    assert result.failed
    assert "tok-9f8e7d" not in repr(result) and "tok-9f8e7d" not in str(result.to_dict())
    assert "********" in result.message
    fc = cast(FakeConnection, conn)
    assert fc.sent == [("login tok-9f8e7d", {"T": "tok-9f8e7d"})]  # sent for real, logged not
    assert [e.command for e in fc.log] == ["login ********"]


# -- users ---------------------------------------------------------------------------------


def test_parse_passwd_and_group_lines() -> None:
    assert parse_passwd_line("app:x:1001:1002:App,,,:/srv/app:/bin/sh\n") == {
        "name": "app", "uid": 1001, "gid": 1002, "gecos": "App,,,", "home": "/srv/app",
        "shell": "/bin/sh"}
    assert parse_group_line("adm:x:4:syslog,app") == {"name": "adm", "gid": 4,
                                                      "members": ["syslog", "app"]}
    assert parse_group_line("app:x:1002:")["members"] == []
    with pytest.raises(ValueError):
        parse_passwd_line("app:x:1001")
    with pytest.raises(ValueError):
        parse_group_line("app:x:notanumber:")


USER_OUT = ("passwd app:x:1001:1002::/home/app:/bin/sh\n"
            "group other:x:7:\n"
            "groups app adm www-data\n")


def test_user_probe_is_quoted_and_parses_primary_and_supplementary_groups() -> None:
    task = system.user("app")
    assert task.probe_script() == (
        "getent passwd -- app 2>/dev/null | sed 's/^/passwd /'\n"
        "id -Gn -- app 2>/dev/null | sed 's/^/groups /'")
    assert task.parse(USER_OUT) == {
        "exists": True, "name": "app", "uid": 1001, "gid": 1002, "gecos": "",
        "home": "/home/app", "shell": "/bin/sh", "group": "app", "groups": ["adm", "www-data"]}
    assert task.parse("groups \n") == {"exists": False}
    # an entry for another name (never expected, but never trusted) is not this user
    assert task.parse("passwd root:x:0:0:root:/root:/bin/bash\n") == {"exists": False}


def test_user_plan_for_a_new_user_lists_the_attributes() -> None:
    task = system.user("app", uid=1500, shell="/bin/bash", groups=["adm", "adm", "staff"])  # noqa: S604 (a login shell)
    assert task.plan(fake(), {"exists": False}).render() == (
        "state: absent -> present\nuid: (none) -> 1500\ngroups: (none) -> adm,staff\n"
        "shell: (none) -> /bin/bash")


def test_user_plan_is_empty_when_attributes_match() -> None:
    facts = system.user("app").parse(USER_OUT)
    same = system.user("app", uid=1001, group="app", groups=["adm"], home="/home/app",  # noqa: S604 (a login shell)
                       shell="/bin/sh")
    assert not same.plan(fake(), facts)
    assert not system.user("app", group=1002).plan(fake(), facts)
    assert not system.user("app", group="1002").plan(fake(), facts)
    assert not system.user("gone", state="absent").plan(fake(), {"exists": False})


def test_user_plan_shows_each_differing_attribute() -> None:
    facts = system.user("app").parse(USER_OUT)
    task = system.user("app", uid=1001, group="staff", groups=["www-data", "sudo"],  # noqa: S604 (a login shell)
                       home="/srv/app", shell="/bin/bash")
    assert task.plan(fake(), facts).render() == (
        "group: app -> staff\ngroups: adm,www-data -> adm,sudo,www-data\n"
        "home: /home/app -> /srv/app\nshell: /bin/sh -> /bin/bash")
    assert system.user("app", state="absent").plan(fake(), facts).render() == (
        "state: present -> absent")


def test_user_apply_builds_quoted_commands_and_undo() -> None:
    facts = system.user("app").parse(USER_OUT)
    task = system.user("app", groups=["sudo"], shell="/bin/bash")  # noqa: S604 (a login shell)
    conn, undo = fake(), UndoStack()
    task.apply(conn, facts, task.plan(conn, facts), undo)
    assert [e.command for e in log_of(conn)] == [
        "usermod -a -G sudo -s /bin/bash -- app"]
    undo.unwind(conn)
    assert [e.command for e in log_of(conn)][1:] == [
        "usermod -s /bin/sh -- app", "gpasswd -d app -- sudo"]

    create = system.user("app", system=True, create_home=False, home="/srv/my app")
    conn, undo = fake(), UndoStack()
    create.apply(conn, {"exists": False}, create.plan(conn, {"exists": False}), undo)
    assert [e.command for e in log_of(conn)] == ["useradd -r -M -d '/srv/my app' -- app"]
    undo.unwind(conn)
    assert [e.command for e in log_of(conn)][1:] == ["userdel -- app"]

    gone = system.user("app", state="absent", remove_home=True)
    conn, undo = fake(), UndoStack()
    gone.apply(conn, facts, gone.plan(conn, facts), undo)
    assert [e.command for e in log_of(conn)] == ["userdel -r -- app"] and undo.actions == []


@pytest.mark.parametrize("bad", ["", PWNED, "-rf", "a:b", "a/b", "1234", "x" * 33, "a b"])
def test_bad_account_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid user name"):
        system.user(bad)
    with pytest.raises(ConfigError, match="invalid group name"):
        system.group(bad)


def test_bad_user_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="state"):
        system.user("app", state="gone")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="uid"):
        system.user("app", uid=-1)
    with pytest.raises(ConfigError, match="shell must be an absolute path"):
        system.user("app", shell="bash")  # noqa: S604 (a login shell)
    with pytest.raises(TypeError, match="list of group names"):
        system.user("app", groups="adm")


# -- groups --------------------------------------------------------------------------------


def test_group_probe_parse_and_plan() -> None:
    task = system.group("app", gid=2000)
    assert task.probe_script() == "getent group -- app 2>/dev/null | sed 's/^/group /'"
    facts = task.parse("group app:x:1002:web,worker\n")
    assert facts == {"exists": True, "name": "app", "gid": 1002, "members": ["web", "worker"]}
    assert task.plan(fake(), facts).render() == "gid: 1002 -> 2000"
    assert not system.group("app").plan(fake(), facts)
    assert task.plan(fake(), {"exists": False}).render() == (
        "state: absent -> present\ngid: (none) -> 2000")
    assert system.group("app", state="absent").plan(fake(), facts).render() == (
        "state: present -> absent")


def test_group_apply_and_undo_commands() -> None:
    facts = {"exists": True, "name": "app", "gid": 1002, "members": ["web", "worker"]}
    gone = system.group("app", state="absent")
    conn, undo = fake(), UndoStack()
    gone.apply(conn, facts, gone.plan(conn, facts), undo)
    undo.unwind(conn)
    assert [e.command for e in log_of(conn)] == [
        "groupdel -- app", "groupadd -g 1002 -- app", "gpasswd -M web,worker -- app"]

    new = system.group("app", gid=2000, system=True)
    conn, undo = fake(), UndoStack()
    new.apply(conn, {"exists": False}, new.plan(conn, {"exists": False}), undo)
    undo.unwind(conn)
    assert [e.command for e in log_of(conn)] == ["groupadd -r -g 2000 -- app",
                                                 "groupdel -- app"]

    conn, undo = fake(), UndoStack()
    new.apply(conn, facts, new.plan(conn, facts), undo)
    undo.unwind(conn)
    assert [e.command for e in log_of(conn)] == ["groupmod -g 2000 -- app",
                                                 "groupmod -g 1002 -- app"]


# -- packages ------------------------------------------------------------------------------

DPKG_OUT = (
    "pkg libc6 install ok installed 2.36-9+deb12u14\n"
    "pkg openssh-server install ok installed 1:9.2p1-2+deb12u10\n"
    "pkg oldthing deinstall ok config-files 1.0-1\n"
    "pkg multi install ok not-installed\n"
    "pkg multi install ok installed 3.1-1\n"
)


def test_parse_dpkg_status() -> None:
    assert parse_dpkg_status(DPKG_OUT + "noise line\npkg short\n") == {
        "libc6": {"status": "installed", "version": "2.36-9+deb12u14"},
        "openssh-server": {"status": "installed", "version": "1:9.2p1-2+deb12u10"},
        "oldthing": {"status": "config-files", "version": "1.0-1"},
        "multi": {"status": "installed", "version": "3.1-1"},
    }


def test_package_probe_quotes_names_and_the_format() -> None:
    script = system.package(["openssh-server", PWNED]).probe_script()
    assert script == (
        "if command -v dpkg-query >/dev/null 2>&1; then dpkg-query -W -f "
        "'pkg ${Package} ${Status} ${Version}\\n' -- openssh-server "
        f"{quote(PWNED)} 2>/dev/null || :; else echo 'nodpkg'; fi")


def test_installed_packages_plan_empty() -> None:
    task = system.package(["libc6", "openssh-server", "multi", "libc6:amd64"])
    assert not task.plan(fake(), task.parse(DPKG_OUT))
    assert not system.package("openssh-server", version="1:9.2").plan(
        fake(), task.parse(DPKG_OUT))


def test_missing_packages_fail_naming_them_and_the_apt_command() -> None:
    task = system.package(["libc6", "oldthing", "nosuch"])
    with pytest.raises(TaskError) as info:
        task.plan(fake(), task.parse(DPKG_OUT))
    assert "not installed: oldthing, nosuch" in info.value.message
    assert "apt-get install -y oldthing nosuch" in info.value.message
    result = task.run(fake(lambda cmd: (0, DPKG_OUT, "")))
    assert result.status is Status.FAILED and "nosuch" in result.message


def test_package_version_prefix() -> None:
    assert version_matches("1:9.2p1-2+deb12u10", "1:9.2")
    assert version_matches("1:9.2p1-2+deb12u10", "9.2p1")  # epoch ignored when not given
    assert not version_matches("1:9.2p1-2", "2:9.2")
    assert not version_matches("2.36-9", "2.37")
    task = system.package("libc6", version="2.37")
    with pytest.raises(TaskError, match=r"libc6 is version 2.36-9\+deb12u14, not 2.37\*"):
        task.plan(fake(), task.parse(DPKG_OUT))
    with pytest.raises(ConfigError, match="exactly one package"):
        system.package(["a", "b"], version="1")


def test_package_absent_and_no_dpkg() -> None:
    facts = PackageTask(["nosuch"]).parse(DPKG_OUT)
    assert not system.package("nosuch", state="absent").plan(fake(), facts)
    with pytest.raises(TaskError, match="apt-get remove -y libc6"):
        system.package(["libc6", "nosuch"], state="absent").plan(fake(), facts)
    with pytest.raises(TaskError, match="dpkg-query is not on this host"):
        system.package("libc6").plan(fake(), system.package("libc6").parse("nodpkg\n"))


def test_task_kinds_and_targets() -> None:
    assert isinstance(system.command("true"), CommandTask)
    assert isinstance(system.user("app"), UserTask) and system.user("app").name == "user app"
    assert isinstance(system.group("app"), GroupTask) and system.group("app").name == "group app"
    assert system.package(["a", "b"]).name == "package a, b"
