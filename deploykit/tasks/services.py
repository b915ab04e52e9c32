"""Service tasks: long-running programs under supervisor (or systemd).

::

    from deploykit.tasks import services

    services.program("sampleapp-blue",
                     ["/srv/sampleapp/blue/venv/bin/gunicorn", "-c", "gunicorn.conf.py",
                      "sampleapp.web:application"],
                     directory="/srv/sampleapp/blue", user="www-data",
                     environment={"PORT": "8001"}, startsecs=2)
    services.service("sampleapp-green", "stopped")
    services.restart("sampleapp-blue")
    services.status(conn, "sampleapp-blue").running

The service manager is chosen per host by the host var ``service_manager``:
``supervisor`` (the default) or ``systemd`` (or per task with ``manager=``).
Both present the same states, supervisor's: ``RUNNING``, ``STARTING``,
``BACKOFF``, ``STOPPING``, ``STOPPED``, ``EXITED``, ``FATAL``, ``UNKNOWN``, and
``ABSENT`` for a program the manager does not know.

* **supervisor**: a program is ``/etc/supervisor/conf.d/<name>.conf``;
  ``supervisorctl reread`` + ``update <name>`` applies a change (and restarts
  the program if it ran); ``supervisorctl`` talks to supervisord over
  ``/run/supervisor.sock`` (as ``/etc/supervisor/supervisord.conf`` says).
* **systemd**: a program is ``/etc/systemd/system/<name>.service``;
  ``systemctl daemon-reload`` + ``enable`` applies it.

Starting waits until the program is ``RUNNING``: up for ``startsecs``
seconds (supervisor's own rule; systemd: still running, not restarted, after
``startsecs``). A program that does not get there (it exits at start) fails
the task with its state and **the last lines of its stderr log** in the
message. Secrets do not belong in a program's environment (its config file
is world-readable): put them in the app's ``.env``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.facts import PathFacts, parse_path, path_script
from deploykit.inventory import Host
from deploykit.secrets import Secret
from deploykit.shell import join, quote
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks.files import AbsentTask, FileTask

__all__ = [
    "MANAGERS",
    "ProgramSpec",
    "ProgramTask",
    "Readiness",
    "ServiceManager",
    "ServiceStatus",
    "ServiceTask",
    "Supervisor",
    "Systemd",
    "manager_for",
    "program",
    "restart",
    "service",
    "start_failure",
    "status",
]

ProgramState = Literal["started", "stopped", "present", "absent"]
ServiceState = Literal["started", "stopped", "restarted"]
#: What a start waits for: ``running`` (the manager's RUNNING, after ``startsecs``) or
#: ``started`` (the process is up; a health check then decides readiness).
Readiness = Literal["running", "started"]

RUNNING = "RUNNING"
ABSENT = "ABSENT"
ACTIVE_STATES = ("RUNNING", "STARTING", "BACKOFF")
LOG_LINES = 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}\Z")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIGNALS = ("TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"program name {name!r}: use letters, digits, '_', '.', '@' or '-', "
                          "starting with a letter or digit")
    return name


# -- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """A program's state as its manager reports it."""

    name: str
    state: str
    pid: int | None = None
    detail: str = ""

    @property
    def running(self) -> bool:
        """True when the program is ``RUNNING``."""
        return self.state == RUNNING

    @property
    def known(self) -> bool:
        """True when the manager knows the program (it is not ``ABSENT``)."""
        return self.state != ABSENT


# -- what a program is ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramSpec:
    """A long-running program, as either manager runs it. See :func:`program`."""

    name: str
    command: tuple[str, ...]
    directory: str | None = None
    user: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    stdout_logfile: str | None = None
    stderr_logfile: str | None = None
    startsecs: int = 2
    startretries: int = 3
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    autostart: bool = True
    autorestart: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.command or not self.command[0]:
            raise ConfigError(f"program {self.name}: the command is empty")
        if not self.command[0].startswith("/"):
            raise ConfigError(f"program {self.name}: the command must start with an absolute "
                              f"path, not {self.command[0]!r}")
        for key, value in self.environment.items():
            if isinstance(value, Secret):
                raise ConfigError(f"program {self.name}: environment {key} is a Secret; "
                                  "program configs are world-readable, put secrets in the "
                                  "app's .env instead")
            if not _ENV_KEY.match(key):
                raise ConfigError(f"program {self.name}: invalid environment variable name "
                                  f"{key!r}")
        for path in (self.directory, self.stdout_logfile, self.stderr_logfile):
            if path is not None and not path.startswith("/"):
                raise ConfigError(f"program {self.name}: {path!r} must be an absolute path")
        for number in ("startsecs", "startretries", "stopwaitsecs"):
            value = getattr(self, number)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"program {self.name}: {number} must be a non-negative "
                                  f"integer, not {value!r}")
        if self.stopsignal not in _SIGNALS:
            raise ConfigError(f"program {self.name}: stopsignal {self.stopsignal!r} is not one "
                              f"of {', '.join(_SIGNALS)}")


def _plain(spec_name: str, what: str, value: str, bad: str) -> str:
    """``value`` unless it holds a character of ``bad`` or a line break."""
    if any(c in value for c in bad + "\n\r\0"):
        raise ConfigError(f"program {spec_name}: {what} {value!r} holds a character the "
                          f"service manager cannot take ({bad!r} or a line break)")
    return value


# -- the managers -------------------------------------------------------------------------


class ServiceManager(ABC):
    """How one service manager stores, applies, starts and reports programs.

    Every method returns a shell snippet or parses one's output; the tasks
    send them. Snippets never print lines that do not start with their tag.
    """

    name: ClassVar[str]

    @abstractmethod
    def config_path(self, program: str) -> str:
        """Where the program's config (or unit) file lives."""

    @abstractmethod
    def render(self, spec: ProgramSpec) -> str:
        """The config file for ``spec``."""

    @abstractmethod
    def status_script(self, program: str) -> str:
        """Print one ``status ...`` line (read-only)."""

    @abstractmethod
    def parse_status(self, program: str, output: str) -> ServiceStatus:
        """Parse :meth:`status_script` output."""

    @abstractmethod
    def activate(self, program: str) -> str:
        """Make the manager load a new or changed config (restarting the program if it
        runs) or forget a removed one."""

    @abstractmethod
    def command(self, program: str, action: Literal["start", "stop", "restart"]) -> str:
        """Start, stop or restart the program."""

    @abstractmethod
    def wait_script(self, program: str, startsecs: int, timeout: float, *,
                    started: bool = False) -> str:
        """Wait until the program is RUNNING (starting it once if it is stopped) or
        failed, at most ``timeout`` s; print its final :meth:`status_script` line.

        ``started``: return as soon as the process is started (``STARTING``), without
        waiting ``startsecs``: readiness is then the caller's health check."""

    @abstractmethod
    def log_script(self, program: str, lines: int) -> str:
        """Print the last ``lines`` lines of the program's stderr log."""


class Supervisor(ServiceManager):
    """supervisord programs in /etc/supervisor/conf.d, driven by supervisorctl."""

    name = "supervisor"
    conf_dir = "/etc/supervisor/conf.d"
    ctl = "supervisorctl -c /etc/supervisor/supervisord.conf"
    log_dir = "/var/log/supervisor"

    def config_path(self, program: str) -> str:
        return f"{self.conf_dir}/{program}.conf"

    def render(self, spec: ProgramSpec) -> str:
        def value(what: str, text: str) -> str:
            text = _plain(spec.name, what, text, "")
            if re.search(r"\s[;#]", text):
                raise ConfigError(f"program {spec.name}: {what} {text!r} has ' ;' or ' #', "
                                  "which supervisor reads as the start of a comment")
            return text.replace("%", "%%")

        lines = [f"; {spec.name}: written by deploykit, changes here are overwritten",
                 f"[program:{spec.name}]",
                 f"command={value('command', join(spec.command))}"]
        if spec.directory:
            lines.append(f"directory={value('directory', spec.directory)}")
        if spec.user:
            lines.append(f"user={value('user', spec.user)}")
        if spec.environment:
            pairs = []
            for key, text in sorted(spec.environment.items()):
                text = _plain(spec.name, f"environment {key}", text, '"')
                if text[:1] == "'" or text[-1:] == "'":
                    raise ConfigError(f"program {spec.name}: environment {key} may not start "
                                      "or end with a quote")
                pairs.append(f'{key}="{value(f"environment {key}", text)}"')
            lines.append(f"environment={','.join(pairs)}")
        lines += [
            f"autostart={str(spec.autostart).lower()}",
            f"autorestart={'true' if spec.autorestart else 'false'}",
            f"startsecs={spec.startsecs}",
            f"startretries={spec.startretries}",
            f"stopsignal={spec.stopsignal}",
            f"stopwaitsecs={spec.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "stdout_logfile="
            + value("stdout_logfile", spec.stdout_logfile or f"{self.log_dir}/{spec.name}.out.log"),
            "stderr_logfile="
            + value("stderr_logfile", spec.stderr_logfile or f"{self.log_dir}/{spec.name}.err.log"),
        ]
        return "\n".join(lines) + "\n"

    def status_script(self, program: str) -> str:
        return f"printf 'status %s\\n' \"$({self.ctl} status {quote(program)} 2>&1)\""

    def parse_status(self, program: str, output: str) -> ServiceStatus:
        line = next((x[7:] for x in output.splitlines() if x.startswith("status ")), "")
        fields = line.split(None, 2)
        if "no such process" in line or not fields:
            return ServiceStatus(program, ABSENT, detail=line.strip())
        if fields[0] != program or len(fields) < 2:
            return ServiceStatus(program, "UNKNOWN", detail=line.strip())
        detail = fields[2] if len(fields) > 2 else ""
        pid = re.match(r"pid (\d+)", detail)
        return ServiceStatus(program, fields[1], int(pid.group(1)) if pid else None, detail)

    def activate(self, program: str) -> str:
        return f"{self.ctl} reread >/dev/null && {self.ctl} update {quote(program)}"

    def command(self, program: str, action: Literal["start", "stop", "restart"]) -> str:
        return f"{self.ctl} {action} {quote(program)}"

    #: Start a program without waiting for ``startsecs`` (supervisorctl start waits).
    START_NOWAIT = (
        "/usr/bin/python3 -c 'import sys, xmlrpc.client\n"
        "from supervisor.xmlrpc import SupervisorTransport\n"
        "t = SupervisorTransport(None, None, \"unix:///run/supervisor.sock\")\n"
        "xmlrpc.client.ServerProxy(\"http://localhost\", transport=t)"
        ".supervisor.startProcess(sys.argv[1], False)' ")

    def wait_script(self, program: str, startsecs: int, timeout: float, *,
                    started: bool = False) -> str:
        p = quote(program)
        start = (f"{{ {self.START_NOWAIT}{p} || {self.ctl} start {p}; }}" if started
                 else f"{self.ctl} start {p}")
        return (
            f"end=$(( $(date +%s) + {int(timeout) + 1} )); first=1\n"
            "while :; do\n"
            f"  line=$({self.ctl} status {p} 2>&1); set -f; set -- $line; set +f\n"
            "  case \"${2:-}\" in\n"
            "    RUNNING) break ;;\n"
            + ("    STARTING) break ;;\n    BACKOFF|STOPPING) ;;\n" if started
               else "    STARTING|BACKOFF|STOPPING) ;;\n")
            + "    STOPPED|EXITED|FATAL) [ -n \"$first\" ] || break\n"
            f"      {start} >/dev/null 2>&1 || : ;;\n"
            "    *) break ;;\n"
            "  esac\n"
            "  first=\n"
            "  [ \"$(date +%s)\" -lt \"$end\" ] || break\n"
            "  sleep 0.3\n"
            "done\n"
            "printf 'status %s\\n' \"$line\""
        )

    def log_script(self, program: str, lines: int) -> str:
        return f"{self.ctl} tail -{lines * 400} {quote(program)} stderr 2>&1 | tail -n {lines}"


def _unit_word(spec_name: str, what: str, text: str) -> str:
    """One word of a systemd unit line, in double quotes, specifiers and variables escaped."""
    text = _plain(spec_name, what, text, "")
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
               .replace("$", "$$"))
    return f'"{escaped}"'


class Systemd(ServiceManager):
    """systemd services in /etc/systemd/system, driven by systemctl."""

    name = "systemd"
    unit_dir = "/etc/systemd/system"

    def config_path(self, program: str) -> str:
        return f"{self.unit_dir}/{program}.service"

    def render(self, spec: ProgramSpec) -> str:
        n = spec.name
        lines = ["# written by deploykit, changes here are overwritten",
                 "[Unit]", f"Description={n} (deploykit program)",
                 "After=network-online.target", "", "[Service]", "Type=simple",
                 "ExecStart=" + " ".join(_unit_word(n, "command", a) for a in spec.command)]
        if spec.directory:
            lines.append(f"WorkingDirectory={_unit_word(n, 'directory', spec.directory)}")
        if spec.user:
            lines.append(f"User={_plain(n, 'user', spec.user, ' ')}")
        for key, text in sorted(spec.environment.items()):
            lines.append(f"Environment={_unit_word(n, f'environment {key}', f'{key}={text}')}")
        for stream, path in (("Output", spec.stdout_logfile), ("Error", spec.stderr_logfile)):
            if path:
                lines.append(f"Standard{stream}=append:{_plain(n, 'log file', path, ' ')}")
        lines += [f"Restart={'on-failure' if spec.autorestart else 'no'}",
                  "RestartSec=1",
                  f"StartLimitBurst={spec.startretries + 1}",
                  f"KillSignal=SIG{spec.stopsignal}",
                  f"TimeoutStopSec={spec.stopwaitsecs}",
                  "KillMode=control-group",
                  "", "[Install]", "WantedBy=multi-user.target"]
        return "\n".join(lines) + "\n"

    def status_script(self, program: str) -> str:
        return (f"systemctl show {quote(program + '.service')} -p LoadState -p ActiveState "
                "-p SubState -p MainPID -p NRestarts 2>&1 | sed 's/^/status /'")

    def parse_status(self, program: str, output: str) -> ServiceStatus:
        props = dict(x[7:].partition("=")[::2] for x in output.splitlines()
                     if x.startswith("status ") and "=" in x)
        active, sub = props.get("ActiveState", ""), props.get("SubState", "")
        if props.get("LoadState") in (None, "not-found"):
            return ServiceStatus(program, ABSENT, detail=f"LoadState={props.get('LoadState')}")
        state = {"active": RUNNING if sub in ("running", "exited") else "STARTING",
                 "activating": "BACKOFF" if sub == "auto-restart" else "STARTING",
                 "deactivating": "STOPPING", "inactive": "STOPPED",
                 "failed": "FATAL"}.get(active, "UNKNOWN")
        pid = int(props.get("MainPID") or 0) or None
        return ServiceStatus(program, state, pid,
                             f"{active}/{sub} restarts={props.get('NRestarts', '?')}")

    def activate(self, program: str) -> str:
        unit = quote(program + ".service")
        return (f"systemctl daemon-reload && if [ -e {quote(self.config_path(program))} ]; "
                f"then systemctl enable --quiet {unit} && systemctl try-restart {unit}; "
                f"else systemctl disable --quiet {unit} 2>/dev/null || :; fi")

    def command(self, program: str, action: Literal["start", "stop", "restart"]) -> str:
        return f"systemctl {action} {quote(program + '.service')}"

    def wait_script(self, program: str, startsecs: int, timeout: float, *,
                    started: bool = False) -> str:
        startsecs = 0 if started else startsecs
        unit = quote(program + ".service")
        show = f"systemctl show {unit} -p NRestarts --value"
        return (
            f"r=$({show}); "
            f"if ! systemctl is-active --quiet {unit}; then systemctl start {unit} || :; fi; "
            f"sleep {startsecs}; "
            f"if [ \"$({show})\" != \"$r\" ]; then echo 'status ActiveState=failed'; "
            f"echo 'status LoadState=loaded'; echo 'status SubState=restarted'; "
            f"else {self.status_script(program)}; fi"
        )

    def log_script(self, program: str, lines: int) -> str:
        return (f"journalctl -u {quote(program + '.service')} -n {lines} --no-pager "
                "-o cat 2>&1")


MANAGERS: dict[str, ServiceManager] = {"supervisor": Supervisor(), "systemd": Systemd()}


def manager_for(host: Host, override: str | None = None) -> ServiceManager:
    """The host's service manager: ``override``, else the host var ``service_manager``,
    else supervisor."""
    name = override or str(host.vars.get("service_manager") or "supervisor")
    try:
        return MANAGERS[name]
    except KeyError:
        raise ConfigError(f"service_manager {name!r} is not one of "
                          f"{', '.join(MANAGERS)}", host=host.name) from None


def _check_manager(manager: str | None) -> str | None:
    if manager is not None and manager not in MANAGERS:
        raise ConfigError(f"manager {manager!r} is not one of {', '.join(MANAGERS)}")
    return manager


def status(conn: Connection, name: str, *, manager: str | None = None) -> ServiceStatus:
    """The program's state on ``conn``'s host (one read-only round trip)."""
    backend = manager_for(conn.host, _check_manager(manager))
    out = conn.run(backend.status_script(_check_name(name)), write=False, check=False,
                   task=f"services.status {name}").stdout
    return backend.parse_status(name, out)


#: States in which a started program is not coming up (supervisor's and systemd's, as
#: :class:`ServiceStatus` names them).
NOT_COMING_UP = ("BACKOFF", "FATAL", "EXITED", "STOPPED", "failed", ABSENT)


def start_failure(conn: Connection, name: str, *, manager: str | None = None,
                  log_lines: int = LOG_LINES) -> str | None:
    """Why a program started with ``ready="started"`` is not coming up, or None while it
    is STARTING or RUNNING: its state and the last ``log_lines`` of its stderr log.
    For a health gate to stop waiting on a program that crashed (read-only)."""
    backend = manager_for(conn.host, _check_manager(manager))
    now = status(conn, name, manager=manager)
    if now.state not in NOT_COMING_UP:
        return None
    log = conn.run(backend.log_script(name, log_lines), write=False, check=False,
                   task=f"services.status {name}").stdout.rstrip()
    return (f"program {name} is {now.state}{f' ({now.detail})' if now.detail else ''}. "
            f"Last {log_lines} lines of its stderr log:\n{log or '(empty)'}")


# -- tasks ---------------------------------------------------------------------------------


class _ServiceBase(Task):
    """Probes a program's config file and state, for whichever manager the host has."""

    def __init__(self, program: str, *, manager: str | None, log_lines: int,
                 timeout: float | None, name: str | None, ready: Readiness = "running",
                 ) -> None:
        super().__init__(name=name)
        self.program = _check_name(program)
        self.manager = _check_manager(manager)
        self.log_lines = log_lines
        self.timeout = timeout
        if ready not in ("running", "started"):
            raise ConfigError(f"program {program}: ready must be running or started, "
                              f"not {ready!r}")
        self.ready = ready

    def up(self, now: ServiceStatus) -> bool:
        """The program is as started as this task waits for: RUNNING, or with
        ``ready="started"`` also STARTING (its health check decides the rest)."""
        return now.running or (self.ready == "started" and now.state == "STARTING")

    def target(self) -> str:
        return self.program

    def candidates(self) -> list[ServiceManager]:
        """The managers the batched probe reads: the given one, else both."""
        return [MANAGERS[self.manager]] if self.manager else list(MANAGERS.values())

    def _script(self, backends: Sequence[ServiceManager]) -> str:
        parts = []
        for b in backends:
            parts.append(f"echo '@@{b.name} conf'\n( {path_script(b.config_path(self.program))}\n)")
            guard = ("command -v supervisorctl >/dev/null 2>&1" if b.name == "supervisor"
                     else "[ -d /run/systemd/system ]")
            parts.append(f"echo '@@{b.name} status'\nif {guard}; then "
                         f"{b.status_script(self.program)}; else echo 'status -missing-'; fi")
        return "\n".join(parts)

    def probe_script(self) -> str:
        return self._script(self.candidates())

    def probe(self, conn: Connection) -> Facts:
        """Probe only the host's own manager (the batched probe covers both)."""
        backend = manager_for(conn.host, self.manager)
        result = conn.run(self._script([backend]), write=False, check=False, task=self.name)
        return self.parse(result.stdout)

    def parse(self, output: str) -> Facts:
        sections: dict[str, list[str]] = {}
        current: list[str] = []
        for line in output.splitlines():
            if line.startswith("@@"):
                current = sections.setdefault(line[2:], [])
            else:
                current.append(line)
        return {key: "\n".join(lines) for key, lines in sections.items()}

    def backend(self, conn: Connection, facts: Facts) -> ServiceManager:
        """The host's manager, checked to be there."""
        b = manager_for(conn.host, self.manager)
        if f"{b.name} status" not in facts:
            raise TaskError(f"{b.name} was not probed", host=conn.name, task=self.name)
        if facts[f"{b.name} status"].strip() == "status -missing-":
            where = ("supervisorctl is not installed" if b.name == "supervisor"
                     else "systemd is not running")
            raise TaskError(f"service manager {b.name}: {where} on this host (set the host "
                            "var service_manager)", host=conn.name, task=self.name)
        return b

    def current(self, conn: Connection, facts: Facts) -> tuple[PathFacts, ServiceStatus]:
        """The config file's facts and the program's status, for the host's manager."""
        b = self.backend(conn, facts)
        return (parse_path(facts[f"{b.name} conf"]),
                b.parse_status(self.program, facts[f"{b.name} status"]))

    def wait_running(self, conn: Connection, b: ServiceManager, startsecs: int,
                     retries: int) -> None:
        """Wait for RUNNING (see :meth:`ServiceManager.wait_script`); on failure raise a
        TaskError with the state and the stderr log's last lines."""
        timeout = self.timeout if self.timeout is not None else default_timeout(startsecs,
                                                                                retries)
        out = conn.run(b.wait_script(self.program, startsecs, timeout,
                                     started=self.ready == "started"), check=False,
                       write=False, task=self.name, timeout=timeout + 30).stdout
        now = b.parse_status(self.program, out)
        if self.up(now):
            return
        log = conn.run(b.log_script(self.program, self.log_lines), write=False, check=False,
                       task=self.name).stdout.rstrip()
        raise TaskError(f"program {self.program} did not reach RUNNING within {timeout:g} s: "
                        f"{now.state}{f' ({now.detail})' if now.detail else ''}. Last "
                        f"{self.log_lines} lines of its stderr log:\n{log or '(empty)'}",
                        host=conn.name, task=self.name)


def default_timeout(startsecs: int, startretries: int) -> float:
    """How long to wait for RUNNING: every retry's ``startsecs`` plus supervisor's
    growing back-off (1 s, 2 s, ...) plus a margin."""
    return float((startretries + 1) * (startsecs + 1)
                 + startretries * (startretries + 1) // 2 + 5)


def _undo(command: str, task: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        conn.run(command, task=task)
    return run


class ProgramTask(_ServiceBase):
    """A program's config and state. See :func:`program`."""

    kind: ClassVar[str] = "services.program"

    def __init__(self, spec: ProgramSpec, *, state: ProgramState = "started",
                 manager: str | None = None, log_lines: int = LOG_LINES,
                 timeout: float | None = None, name: str | None = None,
                 ready: Readiness = "running") -> None:
        super().__init__(spec.name, manager=manager, log_lines=log_lines, timeout=timeout,
                         name=name, ready=ready)
        if state not in ("started", "stopped", "present", "absent"):
            raise ConfigError(f"program {spec.name}: state must be started, stopped, present "
                              f"or absent, not {state!r}")
        self.spec = spec
        self.state = state
        for b in self.candidates():
            b.render(spec)  # refuse a config a manager cannot hold now, not on the host

    def config_task(self, b: ServiceManager) -> FileTask:
        """The config file (or unit) as a files task: diff, atomic write, undo."""
        return FileTask(b.config_path(self.program), b.render(self.spec), mode=0o644,
                        name=self.name)

    def _reload_undo(self, b: ServiceManager, *, wait: bool) -> Callable[[Connection], None]:
        """Reload the manager after the old config is back; wait for RUNNING when the
        program ran before (a failure is reported as not undone)."""
        def run(conn: Connection) -> None:
            conn.run(b.activate(self.program), task=self.name)
            if wait:
                self.wait_running(conn, b, self.spec.startsecs, self.spec.startretries)
        return run

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        b = self.backend(conn, facts)
        conf, now = self.current(conn, facts)
        plan = Plan()
        if self.state == "absent":
            if conf.exists:
                plan.add("config", b.config_path(self.program), "absent")
            if now.known:
                plan.add("state", now.state, ABSENT)
            return plan
        plan.changes += self.config_task(b).plan(conn, {"path": conf}).changes
        if self.state == "started" and (not self.up(now) or not now.known):
            plan.add("state", now.state, RUNNING)
        elif self.state == "stopped" and now.state in ACTIVE_STATES:
            plan.add("state", now.state, "STOPPED")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        # Undo actions run last-in first-out: the old config goes back first, then the
        # manager reloads it (and waits for RUNNING if the program ran), then the
        # program's previous run state is restored.
        b = self.backend(conn, facts)
        conf, now = self.current(conn, facts)
        was_active = now.state in ACTIVE_STATES
        if self.state == "absent":
            undo.push(f"reload {b.name} for {self.program}",
                      self._reload_undo(b, wait=was_active))
            if was_active:
                conn.run(b.command(self.program, "stop"), task=self.name)
            if conf.exists:
                AbsentTask(b.config_path(self.program), name=self.name).apply(
                    conn, {"path": conf}, plan, undo)
            conn.run(b.activate(self.program), task=self.name)
            return
        if self.state == "started" and now.known and not was_active:
            undo.push(f"stop {self.program}", _undo(b.command(self.program, "stop"),
                                                     self.name))
        config = self.config_task(b)
        config_plan = config.plan(conn, {"path": conf})
        if config_plan or not now.known:
            undo.push(f"reload {b.name} for {self.program}",
                      self._reload_undo(b, wait=was_active))
            if config_plan:
                config.apply(conn, {"path": conf}, config_plan, undo)
            conn.run(b.activate(self.program), task=self.name)
        if self.state == "started":
            self.wait_running(conn, b, self.spec.startsecs, self.spec.startretries)
        elif self.state == "stopped" and plan.has("state"):
            undo.push(f"start {self.program} again",
                      _undo(b.command(self.program, "start"), self.name))
            conn.run(b.command(self.program, "stop"), task=self.name)

def program(
    name: str,
    command: Sequence[str],
    *,
    directory: str | None = None,
    user: str | None = None,
    environment: Mapping[str, str] | None = None,
    stdout_logfile: str | None = None,
    stderr_logfile: str | None = None,
    startsecs: int = 2,
    startretries: int = 3,
    stopsignal: str = "TERM",
    stopwaitsecs: int = 10,
    autostart: bool = True,
    autorestart: bool = True,
    state: ProgramState = "started",
    manager: str | None = None,
    timeout: float | None = None,
    log_lines: int = LOG_LINES,
    task_name: str | None = None,
    ready: Readiness = "running",
) -> ProgramTask:
    """A long-running program: its config file, and its state.

    Args:
        name: the program's name (supervisor ``[program:name]``, systemd
            ``name.service``).
        command: the argument list; the first must be an absolute path.
        directory: working directory (e.g. the release link ``/srv/app/blue``).
        user: run as this user (the manager runs as root).
        environment: extra variables (plain values only: no Secrets).
        stdout_logfile, stderr_logfile: log files (supervisor default
            ``/var/log/supervisor/<name>.out.log`` / ``.err.log``; systemd:
            the journal).
        startsecs: seconds the program must stay up to count as RUNNING.
        startretries: restarts allowed while starting before it is FATAL.
        stopsignal, stopwaitsecs: how it is stopped (then killed, with its group).
        autostart, autorestart: start with the manager; restart when it exits.
        state: ``started`` (config, then RUNNING), ``stopped``, ``present``
            (config only) or ``absent`` (stopped and config removed).
        manager: ``supervisor`` or ``systemd``; default: the host var
            ``service_manager``, else supervisor.
        timeout: seconds to wait for RUNNING (default: enough for every retry
            and back-off, :func:`default_timeout`).
        log_lines: how many stderr lines a failure message carries.
        task_name: the step's name in reports (default ``services.program <name>``).
        ready: ``running`` (default): a start waits for the manager's RUNNING, i.e.
            ``startsecs`` up; ``started``: a start returns once the process is up
            (supervisor ``STARTING``; started without supervisorctl's blocking
            wait), for callers whose health check then decides readiness.
            Supervisor still applies ``startsecs``: a program that exits at start
            goes BACKOFF then FATAL, which :func:`status` shows.

    Idempotence: ``ok`` when the config file has the same content and mode and
    the state is as wanted; nothing is written. A changed config is applied
    with ``reread``/``update`` (supervisor restarts a running program) or
    ``daemon-reload``/``enable``. Waits for RUNNING after a change or start;
    failure: ``failed`` with the state and the stderr log tail.
    Check mode: the config diff and ``state: STOPPED -> RUNNING``.
    Undo: restores (or removes) the config and reloads the manager, and stops
    a program this task started (or starts one it stopped).
    """
    spec = ProgramSpec(name, tuple(command), directory=directory, user=user,
                       environment=dict(environment or {}), stdout_logfile=stdout_logfile,
                       stderr_logfile=stderr_logfile, startsecs=startsecs,
                       startretries=startretries, stopsignal=stopsignal,
                       stopwaitsecs=stopwaitsecs, autostart=autostart, autorestart=autorestart)
    return ProgramTask(spec, state=state, manager=manager, log_lines=log_lines,
                       timeout=timeout, name=task_name, ready=ready)


class ServiceTask(_ServiceBase):
    """An existing program started, stopped or restarted. See :func:`service`."""

    kind: ClassVar[str] = "services.service"

    def __init__(self, program: str, state: ServiceState, *, startsecs: int = 2,
                 startretries: int = 3, manager: str | None = None,
                 log_lines: int = LOG_LINES, timeout: float | None = None,
                 name: str | None = None, ready: Readiness = "running") -> None:
        super().__init__(program, manager=manager, log_lines=log_lines, timeout=timeout,
                         name=name, ready=ready)
        if state not in ("started", "stopped", "restarted"):
            raise ConfigError(f"service {program}: state must be started, stopped or "
                              f"restarted, not {state!r}")
        self.state = state
        self.startsecs = startsecs
        self.startretries = startretries

    def target(self) -> str:
        return f"{self.program} {self.state}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        b = self.backend(conn, facts)
        _, now = self.current(conn, facts)
        if not now.known:
            raise TaskError(f"{b.name} has no program {self.program} (define it with "
                            "services.program)", host=conn.name, task=self.name)
        plan = Plan()
        if self.state == "restarted":
            plan.add("state", now.state, "RUNNING (restarted)")
        elif self.state == "started" and not self.up(now):
            plan.add("state", now.state, RUNNING)
        elif self.state == "stopped" and now.state in ACTIVE_STATES:
            plan.add("state", now.state, "STOPPED")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        b = self.backend(conn, facts)
        _, now = self.current(conn, facts)
        if self.state == "stopped":
            undo.push(f"start {self.program} again",
                      _undo(b.command(self.program, "start"), self.name))
            conn.run(b.command(self.program, "stop"), task=self.name)
            return
        if self.state == "restarted":
            # with ready="started", stop, then let the wait start it without blocking
            conn.run(b.command(self.program, "stop" if self.ready == "started" else "restart"),
                     check=False, task=self.name)
        elif not self.up(now):
            undo.push(f"stop {self.program}", _undo(b.command(self.program, "stop"),
                                                     self.name))
        self.wait_running(conn, b, self.startsecs, self.startretries)

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """A restart always plans a restart: check the program runs instead."""
        if self.state != "restarted":
            return super().changed_after_apply(conn, facts)
        _, now = self.current(conn, self.probe(conn))
        plan = Plan()
        if not self.up(now):
            plan.add("state", now.state, RUNNING)
        return plan


def service(program: str, state: ServiceState, *, startsecs: int = 2, startretries: int = 3,
            manager: str | None = None, timeout: float | None = None,
            log_lines: int = LOG_LINES, name: str | None = None,
            ready: Readiness = "running") -> ServiceTask:
    """Start, stop or restart a program the manager already knows.

    Args:
        program: the program's name.
        state: ``started`` (wait for RUNNING), ``stopped``, or ``restarted``.
        startsecs, startretries: what the program's config says, to size the
            wait (see :func:`default_timeout`); ``timeout`` overrides it.
        manager, log_lines, ready: as for :func:`program`.

    Idempotence: ``started``/``stopped`` are ``ok`` when the program already is;
    **``restarted`` always restarts** (an action: use it as a handler, or after
    a release switch). An unknown program fails. A program that does not reach
    RUNNING fails with the stderr log's last lines.
    Undo: stops a program this task started, starts one it stopped (a restart
    is not undone).
    """
    return ServiceTask(program, state, startsecs=startsecs, startretries=startretries,
                       manager=manager, log_lines=log_lines, timeout=timeout, name=name,
                       ready=ready)


def restart(program: str, *, startsecs: int = 2, startretries: int = 3,
            manager: str | None = None, timeout: float | None = None,
            log_lines: int = LOG_LINES, name: str | None = None,
            ready: Readiness = "running") -> ServiceTask:
    """``service(program, "restarted", ...)``: restart, then wait for RUNNING (or, with
    ``ready="started"``, for the process to be up)."""
    return service(program, "restarted", startsecs=startsecs, startretries=startretries,
                   manager=manager, timeout=timeout, log_lines=log_lines, name=name,
                   ready=ready)
