"""deploykit.tasks.services without hosts: configs rendered, statuses parsed, commands planned.

The supervisor backend runs for real in tests/lab/test_services.py; systemd has
no place in the lab, so its adapter is checked here: the unit it writes, the
states it reads, and the exact commands a program task sends, against a small
simulated systemd host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from deploykit.connection import CommandResult, Connection, LoggedCommand
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.shell import Command, render
from deploykit.task import UndoStack
from deploykit.tasks import services
from deploykit.tasks.services import ProgramSpec, Supervisor, Systemd

PWNED = "'; touch /tmp/pwned #"
UNIT = "/etc/systemd/system/app-blue.service"


def spec(**changes: Any) -> ProgramSpec:
    values: dict[str, Any] = {
        "name": "app-blue",
        "command": ("/srv/app/blue/venv/bin/gunicorn", "-c", "gunicorn.conf.py", "app:wsgi"),
        "directory": "/srv/app/blue", "user": "www-data",
        "environment": {"PORT": "8001", "GREETING": "50% off, today"}}
    values.update(changes)
    return ProgramSpec(**values)


# -- rendering --------------------------------------------------------------------------


def test_supervisor_program_config() -> None:
    assert Supervisor().render(spec()) == """\
; app-blue: written by deploykit, changes here are overwritten
[program:app-blue]
command=/srv/app/blue/venv/bin/gunicorn -c gunicorn.conf.py app:wsgi
directory=/srv/app/blue
user=www-data
environment=GREETING="50%% off, today",PORT="8001"
autostart=true
autorestart=true
startsecs=2
startretries=3
stopsignal=TERM
stopwaitsecs=10
stopasgroup=true
killasgroup=true
stdout_logfile=/var/log/supervisor/app-blue.out.log
stderr_logfile=/var/log/supervisor/app-blue.err.log
"""


def test_supervisor_quotes_arguments_as_its_shlex_reads_them() -> None:
    text = Supervisor().render(spec(command=("/bin/echo", "a b", "it's"), environment={},
                                    directory=None, user=None, stderr_logfile="/var/log/e.log"))
    assert "command=/bin/echo 'a b' 'it'\"'\"'s'\n" in text
    assert "stderr_logfile=/var/log/e.log\n" in text
    assert "directory=" not in text and "user=" not in text and "environment=" not in text


@pytest.mark.parametrize(("changes", "message"), [
    ({"command": ("/bin/sh", "-c", "a\nb")}, "line break"),
    ({"command": ("/bin/echo", "x ; y")}, "start of a comment"),
    ({"environment": {"A": 'say "hi"'}}, "cannot take"),
    ({"environment": {"A": "'quoted'"}}, "may not start or end with a quote"),
    ({"directory": "/srv/a #b"}, "start of a comment"),
])
def test_supervisor_refuses_what_its_config_cannot_hold(changes: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        services.program(**{"name": "app", "command": ["/bin/true"], **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "../etc/passwd"}, "program name"),
    ({"name": PWNED}, "program name"),
    ({"command": ["gunicorn"]}, "absolute path"),
    ({"command": []}, "command is empty"),
    ({"environment": {"TOKEN": Secret("s3cret")}}, "is a Secret"),
    ({"environment": {"A-B": "1"}}, "invalid environment variable name"),
    ({"directory": "srv/app"}, "must be an absolute path"),
    ({"startsecs": -1}, "startsecs must be a non-negative integer"),
    ({"stopsignal": "TERM; rm -rf /"}, "stopsignal"),
    ({"state": "running"}, "state must be started, stopped, present or absent"),
    ({"manager": "upstart"}, "manager 'upstart' is not one of supervisor, systemd"),
])
def test_bad_programs_are_refused_when_built(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        services.program(**{"name": "app", "command": ["/bin/true"], **changes})


def test_secret_values_never_show_in_the_refusal() -> None:
    with pytest.raises(ConfigError) as err:
        services.program("app", ["/bin/true"],
                         environment=cast(Any, {"TOKEN": Secret("s3cret")}))
    assert "s3cret" not in str(err.value)


def test_systemd_unit() -> None:
    assert Systemd().render(spec(stderr_logfile="/var/log/app/err.log")) == """\
# written by deploykit, changes here are overwritten
[Unit]
Description=app-blue (deploykit program)
After=network-online.target

[Service]
Type=simple
ExecStart="/srv/app/blue/venv/bin/gunicorn" "-c" "gunicorn.conf.py" "app:wsgi"
WorkingDirectory="/srv/app/blue"
User=www-data
Environment="GREETING=50%% off, today"
Environment="PORT=8001"
StandardError=append:/var/log/app/err.log
Restart=on-failure
RestartSec=1
StartLimitBurst=4
KillSignal=SIGTERM
TimeoutStopSec=10
KillMode=control-group

[Install]
WantedBy=multi-user.target
"""


def test_systemd_escapes_quotes_backslashes_specifiers_and_variables() -> None:
    text = Systemd().render(spec(command=("/bin/echo", 'say "hi" \\ $HOME 100%'),
                                 environment={}))
    assert 'ExecStart="/bin/echo" "say \\"hi\\" \\\\ $$HOME 100%%"\n' in text


# -- status -------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "state", "pid"), [
    ("app-blue                         RUNNING   pid 1600, uptime 0:00:02", "RUNNING", 1600),
    ("app-blue                         STOPPED   Nov 25 05:50 PM", "STOPPED", None),
    ("app-blue                         FATAL     Exited too quickly (process log may have "
     "details)", "FATAL", None),
    ("app-blue                         STARTING  ", "STARTING", None),
    ("app-blue: ERROR (no such process)", "ABSENT", None),
    ("", "ABSENT", None),
    ("unix:///run/supervisor.sock no such file", "UNKNOWN", None),
])
def test_supervisor_status_lines(line: str, state: str, pid: int | None) -> None:
    status = Supervisor().parse_status("app-blue", f"noise\nstatus {line}\n")
    assert (status.state, status.pid) == (state, pid)
    assert status.running is (state == "RUNNING")
    assert status.known is (state != "ABSENT")


@pytest.mark.parametrize(("props", "state"), [
    ("LoadState=loaded ActiveState=active SubState=running MainPID=42", "RUNNING"),
    ("LoadState=loaded ActiveState=activating SubState=auto-restart MainPID=0", "BACKOFF"),
    ("LoadState=loaded ActiveState=activating SubState=start MainPID=0", "STARTING"),
    ("LoadState=loaded ActiveState=failed SubState=failed MainPID=0", "FATAL"),
    ("LoadState=loaded ActiveState=inactive SubState=dead MainPID=0", "STOPPED"),
    ("LoadState=not-found ActiveState=inactive SubState=dead MainPID=0", "ABSENT"),
])
def test_systemd_states_map_to_supervisor_names(props: str, state: str) -> None:
    output = "".join(f"status {p}\n" for p in props.split())
    status = Systemd().parse_status("app", output)
    assert status.state == state
    assert status.pid == (42 if state == "RUNNING" else None)


def test_manager_is_chosen_by_host_var() -> None:
    def host(**host_vars: Any) -> Host:
        return Host(name="h", address="192.0.2.1", vars=host_vars)

    assert services.manager_for(host()).name == "supervisor"
    assert services.manager_for(host(service_manager="systemd")).name == "systemd"
    assert services.manager_for(host(service_manager="systemd"), "supervisor").name == (
        "supervisor")
    with pytest.raises(ConfigError, match="service_manager 'runit' is not one of"):
        services.manager_for(host(service_manager="runit"))


def test_default_wait_covers_every_retry_and_backoff() -> None:
    # 4 starts of 2 s (+1 s slack each), back-off 1+2+3 s, 5 s margin
    assert services.default_timeout(2, 3) == 4 * 3 + 6 + 5


def test_batched_probe_reads_both_managers_and_never_writes() -> None:
    script = services.program("app", ["/bin/true"]).probe_script()
    assert "@@supervisor conf" in script and "@@systemd conf" in script
    assert "command -v supervisorctl" in script and "[ -d /run/systemd/system ]" in script
    assert all(word not in script for word in (" start ", " update ", "daemon-reload", "rm "))
    only = services.program("app", ["/bin/true"], manager="systemd").probe_script()
    assert "supervisor" not in only


# -- a simulated systemd host -----------------------------------------------------------------


@dataclass
class SystemdHost:
    """Answers the commands a systemd-managed host would, keeping a unit file and a state."""

    unit: bytes | None = None
    active: str = "inactive"
    crash: bool = False
    systemd: bool = True
    host: Host = field(default_factory=lambda: Host(name="sd-1", address="192.0.2.9",
                                                    vars={"service_manager": "systemd"}))
    log: list[LoggedCommand] = field(default_factory=list)
    secrets: set[Secret] = field(default_factory=set)
    loaded: bool = False
    restarts: int = 0

    @property
    def name(self) -> str:
        return self.host.name

    def _path_line(self) -> str:
        if self.unit is None:
            return "absent"
        return (f"file 644 root root 0 0 {len(self.unit)}\n"
                f"sha256 {hashlib.sha256(self.unit).hexdigest()}  -")

    def _status(self) -> str:
        if not self.systemd:
            return "status -missing-"
        load = "loaded" if self.loaded else "not-found"
        sub = {"active": "running", "failed": "failed"}.get(self.active, "dead")
        return "\n".join(f"status {k}={v}" for k, v in (
            ("LoadState", load), ("ActiveState", self.active), ("SubState", sub),
            ("MainPID", "42" if self.active == "active" else "0"),
            ("NRestarts", str(self.restarts))))

    def _answer(self, cmd: str) -> str:
        if cmd.startswith("echo '@@systemd conf'"):
            return f"@@systemd conf\n{self._path_line()}\n@@systemd status\n{self._status()}\n"
        if cmd.startswith("systemctl daemon-reload"):
            self.loaded = self.unit is not None
            return ""
        if "NRestarts --value" in cmd:  # the wait script starts an inactive unit
            if self.active != "active":
                self.active = "active"
                if self.crash:
                    self.active, self.restarts = "failed", self.restarts + 1
            return self._status() + "\n"
        if cmd.startswith("journalctl"):
            return "Traceback (most recent call last):\nRuntimeError: boom\n"
        if cmd.startswith("systemctl stop"):
            self.active = "inactive"
            return ""
        if cmd.startswith("systemctl restart"):
            self.active = "active"
            return ""
        raise AssertionError(f"unexpected command: {cmd}")

    def run(self, command: Command, *, write: bool = True, check: bool = True,
            **_: Any) -> CommandResult:
        to_send, to_log = render(command)
        out = self._answer(to_send)
        self.log.append(LoggedCommand(to_log, write, 0))
        return CommandResult(self.name, to_log, 0, out, "", 0.0)

    def put(self, data: bytes | str | Path, remote_path: str, *, mode: int | None = None,
            **_: Any) -> bool:
        assert remote_path == UNIT and mode == 0o644
        self.unit = data if isinstance(data, bytes) else str(data).encode()
        self.log.append(LoggedCommand(f"put {remote_path}", True, 0))
        return True

    def writes(self) -> list[str]:
        return [e.command for e in self.log if e.write]

    def conn(self) -> Connection:
        return cast(Connection, self)


def test_systemd_program_commands_then_a_noop_second_run() -> None:
    host = SystemdHost()
    task = services.program("app-blue", ["/srv/app/blue/venv/bin/gunicorn", "app:wsgi"],
                            directory="/srv/app/blue", environment={"PORT": "8001"})
    undo = UndoStack()
    result = task.run(host.conn(), undo=undo)
    assert result.status is Status.CHANGED, result.message
    assert "+ExecStart=\"/srv/app/blue/venv/bin/gunicorn\" \"app:wsgi\"" in result.diff
    assert result.diff.endswith("state: ABSENT -> RUNNING")
    assert host.writes() == [
        f"put {UNIT}",
        f"systemctl daemon-reload && if [ -e {UNIT} ]; then systemctl enable --quiet "
        "app-blue.service && systemctl try-restart app-blue.service; else systemctl disable "
        "--quiet app-blue.service 2>/dev/null || :; fi",
    ]
    waits = [e.command for e in host.log if "NRestarts --value" in e.command]
    assert waits == [
        "r=$(systemctl show app-blue.service -p NRestarts --value); if ! systemctl is-active "
        "--quiet app-blue.service; then systemctl start app-blue.service || :; fi; sleep 2; "
        "if [ \"$(systemctl show app-blue.service -p NRestarts --value)\" != \"$r\" ]; then "
        "echo 'status ActiveState=failed'; echo 'status LoadState=loaded'; echo 'status "
        "SubState=restarted'; else systemctl show app-blue.service -p LoadState -p ActiveState "
        "-p SubState -p MainPID -p NRestarts 2>&1 | sed 's/^/status /'; fi"]
    assert host.active == "active" and b'Environment="PORT=8001"' in (host.unit or b"")

    mark = len(host.log)
    again = task.run(host.conn())
    assert again.status is Status.OK and again.diff == ""
    assert [e.write for e in host.log[mark:]] == [False]  # one read, nothing else

    assert [a.description for a in undo.actions] == [
        "reload systemd for app-blue", "remove /etc/systemd/system/app-blue.service"]


def test_systemd_program_that_exits_fails_with_the_journal_tail() -> None:
    host = SystemdHost(crash=True)
    result = services.program("app-blue", ["/bin/false"]).run(host.conn())
    assert result.status is Status.FAILED
    assert result.message == (
        "program app-blue did not reach RUNNING within 23 s: FATAL (failed/failed "
        "restarts=1). Last 20 lines of its stderr log:\n"
        "Traceback (most recent call last):\nRuntimeError: boom")
    assert [e.command for e in host.log][-1] == (
        "journalctl -u app-blue.service -n 20 --no-pager -o cat 2>&1")


def test_systemd_restart_and_stop_commands() -> None:
    host = SystemdHost(unit=b"x", active="active", loaded=True)
    assert services.restart("app-blue").run(host.conn()).status is Status.CHANGED
    assert services.service("app-blue", "stopped").run(host.conn()).status is Status.CHANGED
    assert services.service("app-blue", "stopped").run(host.conn()).status is Status.OK
    sent = [e.command for e in host.log if not e.command.startswith("echo '@@")]
    assert sent[0] == "systemctl restart app-blue.service"
    assert "NRestarts --value" in sent[1]
    assert sent[2:] == ["systemctl stop app-blue.service"]


def test_systemd_missing_on_the_host_is_named() -> None:
    result = services.program("app", ["/bin/true"]).run(SystemdHost(systemd=False).conn())
    assert result.status is Status.FAILED
    assert result.message == ("service manager systemd: systemd is not running on this host "
                              "(set the host var service_manager)")


def test_restarting_an_unknown_program_fails_clearly() -> None:
    result = services.restart("ghost").run(SystemdHost().conn())
    assert result.status is Status.FAILED
    assert result.message == "systemd has no program ghost (define it with services.program)"


def test_check_mode_plans_without_sending_a_write() -> None:
    host = SystemdHost()
    result = services.program("app-blue", ["/bin/true"]).run(host.conn(), check=True)
    assert result.status is Status.CHANGED and result.message == "would change (check mode)"
    assert host.writes() == [] and host.unit is None

