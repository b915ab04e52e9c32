"""System tasks: run a command, manage users and groups, check packages.

Each function returns a small :class:`~deploykit.task.Task`; run it with
``task.run(conn)`` or hand it to the runner::

    from deploykit.tasks import system

    system.group("app", gid=2000)
    system.user("app", group="app", home="/srv/app", shell="/usr/sbin/nologin")
    system.package(["nginx", "supervisor"])               # a presence check only
    system.command(["tar", "-xf", "/srv/app.tar", "-C", "/srv/app"],
                   creates="/srv/app/VERSION")

Every probe is read-only (``write=False``) and every value in a command goes
through :func:`deploykit.shell.quote`: a user name, a path or a package name
reaches the host as one literal argument, never as shell code. The only shell
code taken from the caller is the command itself and its ``unless``/``only_if``
guards, which are shell tests by definition (and even those are handed to
``sh -c`` as one quoted argument, so a typo in one cannot break the probes
batched around it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from deploykit.connection import CommandResult, Connection
from deploykit.errors import ConfigError, DeployError, TaskError
from deploykit.result import Result, Status
from deploykit.secrets import Secret
from deploykit.shell import join, join_redacted, quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "CommandTask",
    "GroupTask",
    "PackageTask",
    "UserTask",
    "command",
    "group",
    "package",
    "user",
]

State = Literal["present", "absent"]

#: How much of a command's stdout/stderr a Result keeps (the end: where errors are).
OUTPUT_TAIL = 2000
#: How much of a command a task name shows.
NAME_WIDTH = 60

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Characters that break /etc/passwd or /etc/group, or our own parsing of them.
_BAD_ACCOUNT_CHARS = re.compile(r"[\s:,/]")


def _tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _check_account_name(kind: str, name: str) -> None:
    """Refuse names useradd/groupadd would refuse, or that getent would read as an id."""
    if (not name or len(name) > 32 or name.startswith("-") or name in (".", "..")
            or name.isdigit() or _BAD_ACCOUNT_CHARS.search(name)):
        raise ConfigError(
            f"invalid {kind} name {name!r}: 1-32 characters, not all digits, not starting "
            f"with '-', and no whitespace, ':', ',' or '/'")


def _check_state(state: str) -> None:
    if state not in ("present", "absent"):
        raise ConfigError(f"state must be 'present' or 'absent', not {state!r}")


def _check_id(kind: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise ConfigError(f"{kind} must be a non-negative integer, not {value!r}")


def _tagged(tag: str, script: str) -> str:
    """``script``'s stdout lines prefixed with ``tag `` (the probe output we own)."""
    return f"{script} 2>/dev/null | sed 's/^/{tag} /'"


def _tagged_lines(output: str, tag: str) -> list[str]:
    prefix = f"{tag} "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


# -- command ------------------------------------------------------------------------------

GUARDS = ("creates", "removes", "unless", "only_if")
_RAN = "_ran"  # facts key under which CommandTask.apply records what the command did
_CHANGED = "_changed"


class CommandTask(Task):
    """Run one command, once its guards allow it. See :func:`command`."""

    kind: ClassVar[str] = "command"

    def __init__(
        self,
        cmd: str | Sequence[str | Secret],
        *,
        creates: str | None = None,
        removes: str | None = None,
        unless: str | None = None,
        only_if: str | None = None,
        changed_when: Callable[[CommandResult], bool] | None = None,
        check: bool = True,
        run_in_check_mode: bool = False,
        sudo: bool | None = None,
        env: Mapping[str, str | Secret] | None = None,
        timeout: float | None = None,
        undo: str | Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if isinstance(cmd, str):
            if not cmd.strip():
                raise ConfigError("command: the command is empty")
            self.cmd: str | tuple[str | Secret, ...] = cmd
        else:
            self.cmd = tuple(cmd)
            if not self.cmd:
                raise ConfigError("command: the argument list is empty")
            for arg in self.cmd:
                if not isinstance(arg, str | Secret):
                    raise TypeError(f"command: arguments are str or Secret, not {arg!r}")
        for key in env or {}:
            if not _ENV_KEY.match(key):
                raise ConfigError(f"command: invalid environment variable name {key!r}")
        for guard, value in (("unless", unless), ("only_if", only_if)):
            if value is not None and not value.strip():
                raise ConfigError(f"command: {guard} is an empty shell test")
        self.creates = creates
        self.removes = removes
        self.unless = unless
        self.only_if = only_if
        self.changed_when = changed_when
        self.check = check
        self.run_in_check_mode = run_in_check_mode
        self.sudo = sudo
        self.env: dict[str, str | Secret] = dict(env or {})
        self.timeout = timeout
        self.undo: str | tuple[str, ...] | None = (
            undo if undo is None or isinstance(undo, str) else tuple(undo))

    # -- naming and secrets

    @property
    def display(self) -> str:
        """The command as logs and reports show it: every Secret as ``********``."""
        return self.cmd if isinstance(self.cmd, str) else join_redacted(self.cmd)

    def target(self) -> str:
        lines = self.display.strip().splitlines()
        short = lines[0] if lines else ""
        if len(short) > NAME_WIDTH or len(lines) > 1:
            short = short[:NAME_WIDTH].rstrip() + "..."
        return short

    @property
    def secrets(self) -> Sequence[Secret]:
        found = [] if isinstance(self.cmd, str) else [a for a in self.cmd
                                                       if isinstance(a, Secret)]
        return found + [v for v in self.env.values() if isinstance(v, Secret)]

    # -- probe: the guards

    def probe_script(self) -> str:
        lines = []
        if self.creates is not None:
            path = quote(self.creates)
            lines.append(f"if [ -e {path} ] || [ -L {path} ]; then echo 'skip creates'; fi")
        if self.removes is not None:
            path = quote(self.removes)
            lines.append(f"if [ ! -e {path} ] && [ ! -L {path} ]; then echo 'skip removes'; fi")
        if self.unless is not None:
            lines.append(f"if sh -c {quote(self.unless)} </dev/null >/dev/null 2>&1; "
                         "then echo 'skip unless'; fi")
        if self.only_if is not None:
            lines.append(f"if ! sh -c {quote(self.only_if)} </dev/null >/dev/null 2>&1; "
                         "then echo 'skip only_if'; fi")
        return "\n".join(lines) or ":"

    def parse(self, output: str) -> Facts:
        said = set(_tagged_lines(output, "skip"))
        return {"skip": [g for g in GUARDS if g in said]}

    def probe(self, conn: Connection) -> Facts:
        """No guards, nothing to read: no round trip at all."""
        if not any(g is not None for g in (self.creates, self.removes, self.unless,
                                           self.only_if)):
            return {"skip": []}
        return super().probe(conn)

    def skip_reason(self, skip: Sequence[str]) -> str:
        """Why the guards kept the command from running, for the result message."""
        why = {
            "creates": f"{self.creates} exists (creates)",
            "removes": f"{self.removes} does not exist (removes)",
            "unless": f"unless test exited 0: {self.unless}",
            "only_if": f"only_if test failed: {self.only_if}",
        }
        return "not run: " + "; ".join(why[g] for g in skip)

    # -- plan and apply

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if not facts.get("skip"):
            plan.add("command", None, self.display)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        res = conn.run(self.cmd, write=not self.run_in_check_mode, check=False,
                       sudo=self.sudo, env=self.env, timeout=self.timeout, task=self.name)
        facts[_RAN] = res
        if self.check and res.failed:
            detail = _tail((res.stderr or res.stdout).strip(), 500)
            raise TaskError(f"command exited with code {res.exit_code}: {res.command}"
                            + (f"\n{detail}" if detail else ""),
                            host=conn.name, task=self.name)
        try:
            changed = True if self.changed_when is None else bool(self.changed_when(res))
        except Exception as exc:  # a bug in the caller's test: report it on this host
            raise TaskError(f"changed_when raised {type(exc).__name__}: {exc}",
                            host=conn.name, task=self.name) from exc
        facts[_CHANGED] = changed
        if changed and self.undo is not None:
            undo_cmd, sudo, env = self.undo, self.sudo, self.env
            shown = undo_cmd if isinstance(undo_cmd, str) else join_redacted(undo_cmd)

            def run_undo(c: Connection) -> None:
                c.run(undo_cmd, sudo=sudo, env=env, task=f"undo {self.name}")

            undo.push(f"{self.name}: undo with {shown}", run_undo)

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """A command's effect cannot be probed again: nothing remains to compare."""
        return Plan()

    def run(
        self,
        conn: Connection,
        *,
        check: bool = False,
        facts: Facts | None = None,
        undo: UndoStack | None = None,
    ) -> Result:
        """The task contract, plus what only a command has.

        The guards are probed as usual; :meth:`Task.run` then plans and applies
        (in check mode too when ``run_in_check_mode``). :meth:`apply` records the
        command's outcome in this run's own facts dict (a task object may run on
        many hosts at once, so nothing is kept on ``self``), and the Result is
        completed from it: exit code and output tails in ``data``, ``ok``
        when ``changed_when`` said nothing changed.
        """
        started = time.monotonic()
        conn.secrets.update(self.secrets)
        if facts is None:
            try:
                facts = self.probe(conn)
            except DeployError as exc:
                return Result(host=conn.name, task=self.name, status=Status.FAILED,
                              message=exc.message, duration=time.monotonic() - started,
                              check=check, data={"command": self.display, "ran": False})
        state: Facts = dict(facts)
        result = super().run(conn, check=check and not self.run_in_check_mode,
                             facts=state, undo=undo)
        result.check = check
        result.duration = time.monotonic() - started
        result.data["command"] = self.display
        ran = state.get(_RAN)
        result.data["ran"] = isinstance(ran, CommandResult)
        if isinstance(ran, CommandResult):
            result.data.update(exit_code=ran.exit_code, stdout=_tail(ran.stdout),
                               stderr=_tail(ran.stderr))
            if result.status is Status.CHANGED and not state.get(_CHANGED, True):
                result.status = Status.OK
                result.diff = ""
                result.message = f"ran (exit code {ran.exit_code}); changed_when: unchanged"
            elif result.status is not Status.FAILED:
                result.message = f"ran (exit code {ran.exit_code})"
        elif state.get("skip"):
            result.data["skipped_by"] = list(state["skip"])
            result.message = self.skip_reason(state["skip"])
        elif check and result.status is Status.CHANGED:
            result.message = "would run (check mode)"
        return result


def command(
    cmd: str | Sequence[str | Secret],
    *,
    creates: str | None = None,
    removes: str | None = None,
    unless: str | None = None,
    only_if: str | None = None,
    changed_when: Callable[[CommandResult], bool] | None = None,
    check: bool = True,
    run_in_check_mode: bool = False,
    sudo: bool | None = None,
    env: Mapping[str, str | Secret] | None = None,
    timeout: float | None = None,
    undo: str | Sequence[str] | None = None,
    name: str | None = None,
) -> CommandTask:
    """Run a command on the host.

    **A command is NOT idempotent by itself**: deploykit cannot know what it
    changes, so without a guard it runs (and reports ``changed``) on every
    run. Make it idempotent with guards, all evaluated in the read-only probe
    (also in check mode), the command being skipped (``ok``) when any says so:

    * ``creates="/path"``: skip when the path exists (the command creates it);
    * ``removes="/path"``: skip when the path does not exist (the command removes it);
    * ``unless="shell test"``: skip when the test exits 0;
    * ``only_if="shell test"``: run only when the test exits 0.

    Paths are literal (quoted; no globs, ``~`` or variables). ``unless`` and
    ``only_if`` are shell code run with ``sh -c`` in the probe, without
    ``env``: they **must be read-only** tests (``test -f x``, ``grep -q``),
    since they run even in check mode.

    Args:
        cmd: a shell string (run as written: quote its values yourself with
            :func:`deploykit.shell.quote`) or an argument list, quoted element by
            element; a :class:`Secret` element is sent but shown as ``********``
            in the task name, logs and results.
        changed_when: decides after the run whether it changed anything
            (default: it did); returning False makes the result ``ok``.
        check: when True (default) a non-zero exit fails the task, naming the
            exit code; when False the exit code is only recorded.
        run_in_check_mode: run even in check mode, for read-only commands
            (``nginx -t``); such a command is logged as a read.
        sudo, env, timeout: as for :meth:`Connection.run`; Secrets in ``env``
            are redacted everywhere.
        undo: a command (string or argument list) to register on the undo
            stack once this command ran and changed something.
        name: the step's name in reports (default ``command <cmd>``).

    Result: ``data`` holds ``command`` (redacted), ``ran``, and once it ran
    ``exit_code`` and the ends of ``stdout``/``stderr`` (secrets redacted);
    ``skipped_by`` lists the guards that kept it from running. In check mode
    the command is reported as "would run" (``changed``) and not run.
    """
    return CommandTask(cmd, creates=creates, removes=removes, unless=unless, only_if=only_if,
                       changed_when=changed_when, check=check,
                       run_in_check_mode=run_in_check_mode, sudo=sudo, env=env,
                       timeout=timeout, undo=undo, name=name)


# -- users ----------------------------------------------------------------------------------


def parse_passwd_line(line: str) -> dict[str, Any]:
    """``name:x:uid:gid:gecos:home:shell`` -> facts (raises ValueError when malformed)."""
    fields = line.rstrip("\n").split(":")
    if len(fields) != 7:
        raise ValueError(f"not a passwd entry: {line!r}")
    return {"name": fields[0], "uid": int(fields[2]), "gid": int(fields[3]),
            "gecos": fields[4], "home": fields[5], "shell": fields[6]}


def parse_group_line(line: str) -> dict[str, Any]:
    """``name:x:gid:member,member`` -> facts (raises ValueError when malformed)."""
    fields = line.rstrip("\n").split(":")
    if len(fields) != 4:
        raise ValueError(f"not a group entry: {line!r}")
    return {"name": fields[0], "gid": int(fields[2]),
            "members": [m for m in fields[3].split(",") if m]}


class UserTask(Task):
    """A local user account present with given attributes, or absent. See :func:`user`."""

    kind: ClassVar[str] = "user"

    def __init__(
        self,
        user_name: str,
        *,
        state: State = "present",
        uid: int | None = None,
        group: str | int | None = None,
        groups: Sequence[str] = (),
        home: str | None = None,
        shell: str | None = None,
        system: bool = False,
        create_home: bool = True,
        remove_home: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        _check_account_name("user", user_name)
        _check_state(state)
        _check_id("uid", uid)
        if isinstance(group, int):
            _check_id("group", group)
        elif group is not None and not group.isdigit():
            _check_account_name("group", group)
        if isinstance(groups, str):
            raise TypeError("groups is a list of group names, not a string")
        for g in groups:
            _check_account_name("group", g)
        for what, path in (("home", home), ("shell", shell)):
            if path is not None and (not path.startswith("/") or ":" in path
                                     or "\n" in path):
                raise ConfigError(f"{what} must be an absolute path without ':', not {path!r}")
        self.user_name = user_name
        self.state = state
        self.uid = uid
        self.group = group
        self.groups = tuple(dict.fromkeys(groups))
        self.home = home
        self.shell = shell
        self.system = system
        self.create_home = create_home
        self.remove_home = remove_home

    def target(self) -> str:
        return self.user_name

    def probe_script(self) -> str:
        who = quote(self.user_name)
        return "\n".join([_tagged("passwd", f"getent passwd -- {who}"),
                          _tagged("groups", f"id -Gn -- {who}")])

    def parse(self, output: str) -> Facts:
        entries = [e for e in map(parse_passwd_line, _tagged_lines(output, "passwd"))
                   if e["name"] == self.user_name]
        if not entries:
            return {"exists": False}
        facts: Facts = {"exists": True, **entries[0]}
        names = (_tagged_lines(output, "groups") or [""])[0].split()
        facts["group"] = names[0] if names else str(facts["gid"])
        facts["groups"] = sorted(set(names[1:]) - {facts["group"]})
        return facts

    def _group_matches(self, facts: Facts) -> bool:
        if isinstance(self.group, int) or (self.group is not None and self.group.isdigit()):
            return bool(facts["gid"] == int(self.group))
        return bool(facts["group"] == self.group)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if self.state == "absent":
            if facts["exists"]:
                plan.add("state", "present", "absent")
            return plan
        if not facts["exists"]:
            plan.add("state", "absent", "present")
            for attr, value in (("uid", self.uid), ("group", self.group),
                                ("groups", ",".join(self.groups) or None),
                                ("home", self.home), ("shell", self.shell)):
                if value is not None:
                    plan.add(attr, None, value)
            return plan
        if self.uid is not None and facts["uid"] != self.uid:
            plan.add("uid", facts["uid"], self.uid)
        if self.group is not None and not self._group_matches(facts):
            plan.add("group", facts["group"], self.group)
        missing = [g for g in self.groups if g not in facts["groups"]]
        if missing:
            plan.add("groups", ",".join(facts["groups"]) or None,
                     ",".join(sorted({*facts["groups"], *missing})))
        if self.home is not None and facts["home"] != self.home:
            plan.add("home", facts["home"], self.home)
        if self.shell is not None and facts["shell"] != self.shell:
            plan.add("shell", facts["shell"], self.shell)
        return plan

    def _usermod_args(self, plan: Plan, facts: Facts) -> list[str]:
        args: list[str] = []
        if plan.has("uid"):
            args += ["-u", str(self.uid)]
        if plan.has("group"):
            args += ["-g", str(self.group)]
        missing = [g for g in self.groups if g not in facts.get("groups", ())]
        if missing:
            args += ["-a", "-G", ",".join(missing)]
        if plan.has("home"):
            args += ["-d", str(self.home)]
        if plan.has("shell"):
            args += ["-s", str(self.shell)]
        return args

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        who = self.user_name
        if self.state == "absent":
            conn.run(["userdel", *(["-r"] if self.remove_home else []), "--", who],
                     task=self.name)
            return  # no undo: a password hash and a home directory are not ours to recreate
        if not facts["exists"]:
            argv = ["useradd"]
            if self.system:
                argv.append("-r")
            argv.append("-m" if self.create_home else "-M")
            if self.uid is not None:
                argv += ["-u", str(self.uid)]
            if self.group is not None:
                argv += ["-g", str(self.group)]
            if self.groups:
                argv += ["-G", ",".join(self.groups)]
            if self.home is not None:
                argv += ["-d", self.home]
            if self.shell is not None:
                argv += ["-s", self.shell]
            conn.run([*argv, "--", who], task=self.name)
            undo.push(f"remove user {who} (created by {self.name})",
                      lambda c: _run_undo(c, [["userdel", "--", who]], self.name))
            return
        conn.run(["usermod", *self._usermod_args(plan, facts), "--", who], task=self.name)
        back: list[str] = []
        if plan.has("uid"):
            back += ["-u", str(facts["uid"])]
        if plan.has("group"):
            back += ["-g", str(facts["gid"])]
        if plan.has("home"):
            back += ["-d", facts["home"]]
        if plan.has("shell"):
            back += ["-s", facts["shell"]]
        added = [g for g in self.groups if g not in facts["groups"]]
        steps = [["usermod", *back, "--", who]] if back else []
        steps += [["gpasswd", "-d", who, "--", g] for g in added]
        undo.push(f"restore user {who} ({plan.render().replace(chr(10), '; ')})",
                  lambda c: _run_undo(c, steps, self.name))


def _run_undo(conn: Connection, steps: Sequence[Sequence[str]], task: str) -> None:
    """Run undo commands in order; a failure raises RemoteCommandError for the undo report."""
    for argv in steps:
        conn.run(argv, task=f"undo {task}")


def user(
    name: str,
    *,
    state: State = "present",
    uid: int | None = None,
    group: str | int | None = None,
    groups: Sequence[str] = (),
    home: str | None = None,
    shell: str | None = None,
    system: bool = False,
    create_home: bool = True,
    remove_home: bool = False,
) -> UserTask:
    """A local user account, present with these attributes or absent.

    Probe: ``getent passwd NAME`` and ``id -Gn NAME`` in one round trip.
    Plan: ``state: absent -> present`` for a new user, else one change per
    attribute that differs (``shell: /bin/sh -> /bin/bash``); attributes left
    at None are not managed. Apply: ``useradd``/``usermod``/``userdel``.
    Idempotent: a second run finds nothing to change and sends no write.

    Args:
        state: ``present`` or ``absent``.
        uid: the user id.
        group: the primary group (name or gid); it must exist. By default a
            new user gets a group of its own name (Debian's USERGROUPS_ENAB).
        groups: supplementary groups the user must belong to. Membership is
            only ever added: groups not listed are left alone.
        home: the home directory; changing it does not move the old one.
        shell: the login shell.
        system: create a system account (``useradd -r``); creation only.
        create_home: create the home directory at creation (``-m``, else ``-M``).
        remove_home: with ``state="absent"``, also remove home and mail spool.

    Undo: a created user is removed again (``userdel``, leaving its home
    directory: it may have held files before); changed attributes are set
    back and added groups left. Removing a user registers no undo.
    Check mode reports the plan and changes nothing.
    """
    return UserTask(name, state=state, uid=uid, group=group, groups=groups, home=home,
                    shell=shell, system=system, create_home=create_home,
                    remove_home=remove_home)


# -- groups ---------------------------------------------------------------------------------


class GroupTask(Task):
    """A local group present with a given gid, or absent. See :func:`group`."""

    kind: ClassVar[str] = "group"

    def __init__(self, group_name: str, *, state: State = "present", gid: int | None = None,
                 system: bool = False, name: str | None = None) -> None:
        super().__init__(name=name)
        _check_account_name("group", group_name)
        _check_state(state)
        _check_id("gid", gid)
        self.group_name = group_name
        self.state = state
        self.gid = gid
        self.system = system

    def target(self) -> str:
        return self.group_name

    def probe_script(self) -> str:
        return _tagged("group", f"getent group -- {quote(self.group_name)}")

    def parse(self, output: str) -> Facts:
        entries = [e for e in map(parse_group_line, _tagged_lines(output, "group"))
                   if e["name"] == self.group_name]
        return {"exists": True, **entries[0]} if entries else {"exists": False}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if self.state == "absent":
            if facts["exists"]:
                plan.add("state", "present", "absent")
        elif not facts["exists"]:
            plan.add("state", "absent", "present")
            if self.gid is not None:
                plan.add("gid", None, self.gid)
        elif self.gid is not None and facts["gid"] != self.gid:
            plan.add("gid", facts["gid"], self.gid)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        grp = self.group_name
        if self.state == "absent":
            conn.run(["groupdel", "--", grp], task=self.name)
            steps = [["groupadd", "-g", str(facts["gid"]), "--", grp]]
            if facts["members"]:
                steps.append(["gpasswd", "-M", ",".join(facts["members"]), "--", grp])
            undo.push(f"recreate group {grp} (gid {facts['gid']})",
                      lambda c: _run_undo(c, steps, self.name))
        elif not facts["exists"]:
            argv = ["groupadd", *(["-r"] if self.system else []),
                    *(["-g", str(self.gid)] if self.gid is not None else [])]
            conn.run([*argv, "--", grp], task=self.name)
            undo.push(f"remove group {grp} (created by {self.name})",
                      lambda c: _run_undo(c, [["groupdel", "--", grp]], self.name))
        else:
            conn.run(["groupmod", "-g", str(self.gid), "--", grp], task=self.name)
            old = str(facts["gid"])
            undo.push(f"restore gid {old} of group {grp}",
                      lambda c: _run_undo(c, [["groupmod", "-g", old, "--", grp]], self.name))


def group(name: str, *, state: State = "present", gid: int | None = None,
          system: bool = False) -> GroupTask:
    """A local group, present (with ``gid`` when given) or absent.

    Probe: ``getent group NAME``. Plan: ``state: absent -> present`` or
    ``gid: 1001 -> 2000``. Apply: ``groupadd [-r] [-g GID]``, ``groupmod -g``
    or ``groupdel``. Idempotent: a second run sends no write.
    ``system`` applies at creation only.

    Undo: a created group is deleted; a changed gid is set back; a deleted
    group is recreated with its gid and members.
    Check mode reports the plan and changes nothing.
    """
    return GroupTask(name, state=state, gid=gid, system=system)


# -- packages -------------------------------------------------------------------------------

PKG_FORMAT = "pkg ${Package} ${Status} ${Version}\\n"


def parse_dpkg_status(output: str) -> dict[str, dict[str, str]]:
    """Lines ``pkg NAME WANT FLAG STATUS [VERSION]`` -> ``{name: {status, version}}``.

    A package with several architectures counts as installed when any is.
    """
    packages: dict[str, dict[str, str]] = {}
    for line in _tagged_lines(output, "pkg"):
        parts = line.split()
        if len(parts) < 4:
            continue
        entry = {"status": parts[3], "version": parts[4] if len(parts) > 4 else ""}
        known = packages.get(parts[0])
        if known is None or known["status"] != "installed":
            packages[parts[0]] = entry
    return packages


def version_matches(installed: str, wanted: str) -> bool:
    """True when ``installed`` starts with ``wanted``; an epoch-less ``wanted``
    (``9.2p1``) also matches the version without its epoch (``1:9.2p1-2``)."""
    if installed.startswith(wanted):
        return True
    return ":" not in wanted and installed.partition(":")[2].startswith(wanted)


class PackageTask(Task):
    """Check that Debian packages are installed (or not); never installs. See :func:`package`."""

    kind: ClassVar[str] = "package"

    def __init__(self, names: str | Sequence[str], *, state: State = "present",
                 version: str | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.names = (names,) if isinstance(names, str) else tuple(dict.fromkeys(names))
        if not self.names or any(not n or n != n.strip() for n in self.names):
            raise ConfigError(f"package: give one or more package names, not {names!r}")
        _check_state(state)
        if version is not None and (len(self.names) != 1 or state != "present"):
            raise ConfigError("package: version= needs exactly one package and state='present'")
        self.state = state
        self.version = version

    def target(self) -> str:
        return ", ".join(self.names)

    def probe_script(self) -> str:
        query = join(["dpkg-query", "-W", "-f", PKG_FORMAT, "--", *self.names])
        return (f"if command -v dpkg-query >/dev/null 2>&1; then {query} 2>/dev/null || :; "
                "else echo 'nodpkg'; fi")

    def parse(self, output: str) -> Facts:
        return {"dpkg": "nodpkg" not in output.splitlines(),
                "packages": parse_dpkg_status(output)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        """Empty when the check passes; raises TaskError (the task fails) otherwise."""
        if not facts["dpkg"]:
            raise TaskError("dpkg-query is not on this host: package checks need a "
                            "Debian-family system", host=conn.name, task=self.name)
        packages: dict[str, dict[str, str]] = facts["packages"]

        def installed(n: str) -> dict[str, str] | None:
            entry = packages.get(n.partition(":")[0])
            return entry if entry is not None and entry["status"] == "installed" else None

        if self.state == "absent":
            present = [n for n in self.names if installed(n)]
            if present:
                raise TaskError(
                    f"package(s) installed but must not be: {', '.join(present)}. deploykit "
                    f"never removes packages; remove them on the host with: "
                    f"apt-get remove -y {join(present)}", host=conn.name, task=self.name)
            return Plan()
        missing = [n for n in self.names if not installed(n)]
        if missing:
            raise TaskError(
                f"package(s) not installed: {', '.join(missing)}. deploykit checks packages "
                f"but never installs them (hosts may have no route to a package index); "
                f"install them on the host with: apt-get install -y {join(missing)}",
                host=conn.name, task=self.name)
        if self.version is not None:
            (only,) = self.names
            have = (installed(only) or {}).get("version", "")
            if not version_matches(have, self.version):
                raise TaskError(
                    f"package {only} is version {have}, not {self.version}*; install a "
                    f"matching version on the host with: "
                    f"apt-get install -y {quote(f'{only}={self.version}*')}",
                    host=conn.name, task=self.name)
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise TaskError("package is a check: it never changes the host",  # pragma: no cover
                        host=conn.name, task=self.name)


def package(name: str | Sequence[str], *, state: State = "present",
            version: str | None = None) -> PackageTask:
    """Check that Debian packages are installed (``present``) or not (``absent``).

    A **check only**: deploykit never installs or removes packages (production
    hosts often have no route to a package index; releases carry their own
    dependencies). Probe: one ``dpkg-query -W`` for all names. A package that
    is missing (or, for ``absent``, installed) makes the task **fail** with a
    message naming the packages and the ``apt-get`` command to run. Otherwise
    the result is ``ok``: never ``changed``, nothing to undo, same in check mode.

    Args:
        name: one package name or a list (``name:arch`` accepted).
        state: ``present`` or ``absent``.
        version: with one package, a prefix the installed version must start
            with (``"1:9.2"``, or ``"9.2"`` ignoring the epoch).
    """
    return PackageTask(name, state=state, version=version)
