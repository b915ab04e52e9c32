"""File tasks: directories, files, templates, lines in files, symlinks, removal.

Each function builds a task (a plain value) that follows :mod:`deploykit.task`::

    from deploykit.tasks import files
    files.directory("/srv/app", mode="0755", owner="www-data").run(conn)
    files.template("/etc/app.ini", "templates/app.ini.j2", vars={"port": 8000}).run(conn)

How every task here works:

* **probe** — one read-only snippet from :mod:`deploykit.facts`: the path's type,
  mode, owner, size and (for contents) SHA-256, computed on the host. Contents
  never travel to compare them.
* **plan** — ``content`` (with a unified diff), ``mode: 0644 -> 0600``,
  ``owner``/``group``, ``state`` or ``target`` changes. An old content is fetched
  (read-only) only to show a diff, and never for a secret.
* **apply** — contents go through :meth:`Connection.put` (temporary file, checked
  SHA-256, one atomic ``mv``); attributes through ``chmod``/``chown``. Every path
  and value is quoted with :func:`deploykit.shell.quote`.
* **undo** — pushed just *before* the write, and restores the state recorded
  by the probe, so it is right whether the write happened fully, partly or not
  at all. What cannot be restored (a removed directory, a file over
  :data:`RESTORE_LIMIT`) pushes an action that fails with the reason, so the
  run report says what was not undone.

Paths must be absolute. Modes are ints (``0o644``) or octal strings (``"0644"``);
owners and groups are names or numeric ids.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import traceback
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from deploykit.connection import Connection
from deploykit.errors import ConfigError, RollbackError, TaskError
from deploykit.facts import (
    FactRequest,
    PathFacts,
    content_diff,
    content_request,
    diff_note,
    format_mode,
    parse_content,
    parse_mode,
    parse_path,
    path_request,
    request_script,
)
from deploykit.secrets import Secret
from deploykit.shell import quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "RESTORE_LIMIT",
    "AbsentTask",
    "CopyTask",
    "Desired",
    "DirectoryTask",
    "FileTask",
    "LineInFileTask",
    "SymlinkTask",
    "TemplateTask",
    "absent",
    "copy",
    "directory",
    "edit_lines",
    "file",
    "line_in_file",
    "symlink",
    "template",
]

UndoFn = Callable[[Connection], None]
RESTORE_LIMIT = 1024 * 1024
"""Old contents up to this size (bytes) are kept in memory so undo can restore them."""
LINE_FILE_LIMIT = 1024 * 1024
"""line_in_file edits files up to this size (their content is read by the probe)."""


def _absolute(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise ConfigError(f"path must be absolute, got {path!r}")
    return path.rstrip("/") or "/"


def _undo_command(command: str, task: str) -> UndoFn:
    """An undo action running one shell command."""
    def run(conn: Connection) -> None:
        conn.run(command, task=task)
    return run


def _undo_impossible(message: str) -> UndoFn:
    """An undo action that reports why the change cannot be undone."""
    def fail(conn: Connection) -> None:
        raise RollbackError(message, host=conn.name)
    return fail


class _PathTask(Task):
    """A task on one absolute path, with optional wanted mode, owner and group."""

    def __init__(self, path: str, *, mode: int | str | None = None, owner: str | None = None,
                 group: str | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.path = _absolute(path)
        self.mode = parse_mode(mode)
        self.owner = owner
        self.group = group

    def target(self) -> str:
        return self.path

    def probe_requests(self) -> Sequence[FactRequest] | None:
        return (path_request(self.path, checksum=False),)

    def probe_script(self) -> str:
        return request_script(self.probe_requests() or ())

    def touches(self) -> Sequence[str] | None:
        return (self.path,)

    def parse(self, output: str) -> Facts:
        return {"path": parse_path(output)}

    def error(self, conn: Connection, message: str) -> TaskError:
        """A TaskError about this task's path on ``conn``'s host."""
        return TaskError(f"{self.path}: {message}", host=conn.name, task=self.name)

    def plan_attributes(self, plan: Plan, current: PathFacts) -> None:
        """Add the mode/owner/group differences (all of them when the path is new)."""
        if self.mode is not None and current.mode != self.mode:
            plan.add("mode", format_mode(current.mode), format_mode(self.mode))
        owner_ok, group_ok = current.owned_by(self.owner, self.group)
        if not owner_ok:
            plan.add("owner", current.owner, self.owner)
        if not group_ok:
            plan.add("group", current.group, self.group)

    def attribute_commands(self, plan: Plan) -> list[str]:
        """``chmod``/``chown`` commands for the attributes the plan changes."""
        p = quote(self.path)
        commands = []
        if plan.has("mode") and self.mode is not None:
            commands.append(f"chmod {self.mode:o} -- {p}")
        owner = self.owner if plan.has("owner") else None
        group = self.group if plan.has("group") else None
        if owner or group:
            spec = (owner or "") + (f":{group}" if group else "")
            commands.append(f"chown -- {quote(spec)} {p}")
        return commands

    def push_attribute_undo(self, undo: UndoStack, current: PathFacts) -> None:
        """Push an action putting the recorded mode, uid and gid back."""
        p = quote(self.path)
        command = f"chmod {current.mode or 0:o} -- {p} && chown -- {current.uid}:{current.gid} {p}"
        undo.push(f"restore mode and owner of {self.path}", _undo_command(command, self.name))

    def old_content(self, conn: Connection, facts: Facts) -> bytes:
        """The current content of the path (read-only), fetched once per probe."""
        if facts.get("content") is None:
            facts["content"] = conn.get(self.path)
        content: bytes = facts["content"]
        return content

    def push_file_restore(self, conn: Connection, facts: Facts, undo: UndoStack) -> None:
        """Push an action restoring the regular file at the path as the probe saw it."""
        current: PathFacts = facts["path"]
        if (current.size or 0) > RESTORE_LIMIT:
            undo.push(f"restore {self.path}", _undo_impossible(
                f"previous content of {self.path} ({current.size} bytes) was not kept: "
                f"larger than {RESTORE_LIMIT // 1024} KiB"))
            return
        old = self.old_content(conn, facts)

        def restore(c: Connection) -> None:
            c.put(old, self.path, mode=current.mode, owner=str(current.uid),
                  group=str(current.gid), skip_identical=False)

        undo.push(f"restore {self.path}", restore)


# -- directory ---------------------------------------------------------------


class DirectoryTask(_PathTask):
    """A directory exists at ``path`` with the given attributes."""

    kind = "files.directory"

    def __init__(self, path: str, *, recursive: bool = False, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.recursive = recursive

    def touches(self) -> Sequence[str] | None:
        """The directory, and with ``recursive`` the parents ``mkdir -p`` may create."""
        if not self.recursive:
            return (self.path,)
        parents, here = [], posixpath.dirname(self.path)
        while here != "/":
            parents.append(here)
            here = posixpath.dirname(here)
        return (self.path, *parents)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        current: PathFacts = facts["path"]
        if current.exists and current.type != "directory":
            raise self.error(conn, f"exists and is a {current.type}, not a directory")
        plan = Plan()
        if not current.exists:
            plan.add("state", "absent", "directory")
        self.plan_attributes(plan, current)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        current: PathFacts = facts["path"]
        p = quote(self.path)
        commands = self.attribute_commands(plan)
        if current.exists:
            self.push_attribute_undo(undo, current)
        else:
            commands.insert(0, f"mkdir {'-p ' if self.recursive else ''}-- {p}")
            undo.push(f"remove directory {self.path}",
                      _undo_command(f"if [ -d {p} ]; then rmdir -- {p}; fi", self.name))
        self.run_then_probe(conn, " && ".join(commands), facts)


def directory(path: str, *, mode: int | str | None = None, owner: str | None = None,
              group: str | None = None, recursive: bool = False,
              name: str | None = None) -> DirectoryTask:
    """Ensure a directory exists at ``path`` with the given mode, owner and group.

    Args:
        path: absolute path of the directory.
        mode: wanted mode (``0o755`` or ``"0755"``); None leaves it as it is
            (a new directory gets the umask's default).
        owner, group: wanted owner and group (names or numeric ids); None leaves them.
        recursive: create missing parent directories too (``mkdir -p``); without
            it a missing parent is an error.
        name: the step's name in reports (default ``files.directory <path>``).

    Idempotence: ``ok`` when the directory exists with the given attributes.
    A file or link at ``path`` is an error, never replaced.
    Check mode: reports ``state: absent -> directory`` and attribute changes.
    Undo: removes the directory if this task created it (if it is empty by
    then; parents made by ``recursive`` stay), else restores mode and owner.
    """
    return DirectoryTask(path, mode=mode, owner=owner, group=group, recursive=recursive,
                         name=name)


# -- contents: file, template, copy, line_in_file ---------------------------


@dataclass(frozen=True)
class Desired:
    """The bytes a content task wants at its path on one host; ``secret`` hides them."""

    data: bytes
    secret: bool = False


class _ContentTask(_PathTask):
    """A regular file at ``path`` holds :meth:`desired` bytes, with the given attributes."""

    @abstractmethod
    def desired(self, conn: Connection, facts: Facts) -> Desired:
        """The wanted content on ``conn``'s host (rendered, read or computed)."""

    def probe_requests(self) -> Sequence[FactRequest] | None:
        return (path_request(self.path, checksum=True),)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        current: PathFacts = facts["path"]
        if current.type == "link":
            raise self.error(conn, f"is a symlink to {current.link_target}; manage the file "
                                   "it points to, or remove the link first")
        if current.exists and current.type != "file":
            raise self.error(conn, f"exists and is a {current.type}, not a regular file")
        new = self.desired(conn, facts)
        digest = hashlib.sha256(new.data).hexdigest()
        plan = Plan()
        if current.sha256 != digest:
            if new.secret:
                plan.add("content", "(secret)" if current.exists else None, "(secret)",
                         "(secret content changed)")
            else:
                before = f"{current.size} bytes sha256:{(current.sha256 or '')[:12]}"
                plan.add("content", before if current.exists else None,
                         f"{len(new.data)} bytes sha256:{digest[:12]}",
                         self.diff(conn, facts, new.data))
        self.plan_attributes(plan, current)
        return plan

    def diff(self, conn: Connection, facts: Facts, new: bytes) -> str:
        """Unified diff from the host's content to ``new``, fetching the old only if useful."""
        current: PathFacts = facts["path"]
        if not current.exists:
            return content_diff(None, new, self.path)
        note = diff_note(current.size or 0, new)
        if note is not None:
            return note
        return content_diff(self.old_content(conn, facts), new, self.path)

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        current: PathFacts = facts["path"]
        if not plan.has("content"):
            self.push_attribute_undo(undo, current)
            self.run_then_probe(conn, " && ".join(self.attribute_commands(plan)), facts)
            return
        if current.exists:
            self.push_file_restore(conn, facts, undo)
        else:
            undo.push(f"remove {self.path}",
                      _undo_command(f"rm -f -- {quote(self.path)}", self.name))
        desired = self.desired(conn, facts)
        # The upload and the re-probe are two round trips until Connection.put can run
        # a script after the atomic mv (asked of connection.py's owner).
        conn.put(desired.data, self.path, mode=self.mode,
                 owner=self.owner or (str(current.uid) if current.exists else None),
                 group=self.group or (str(current.gid) if current.exists else None),
                 skip_identical=False)


class FileTask(_ContentTask):
    """A regular file at ``path`` holds the given content."""

    kind = "files.file"

    def __init__(self, path: str, content: str | bytes | Secret, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.content = content

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return (self.content,) if isinstance(self.content, Secret) else ()

    def desired(self, conn: Connection, facts: Facts) -> Desired:
        if isinstance(self.content, Secret):
            return Desired(self.content.reveal().encode(), secret=True)
        data = self.content.encode() if isinstance(self.content, str) else self.content
        return Desired(data)


_CONTENT_DOC = """
    Idempotence: contents are compared by SHA-256 on the host; ``ok`` (and
    nothing sent) when content and attributes match. A directory, device or
    symlink at ``path`` is an error, never replaced; the parent must exist.
    Check mode: reports the unified diff (a note instead for binary contents
    or contents over 256 KiB; ``(secret content changed)`` for a secret) and
    attribute changes such as ``mode: 0644 -> 0600``.
    Undo: restores the previous content, mode and owner (the old content is
    kept in memory, up to 1 MiB; beyond that undo reports it cannot restore),
    or removes the file if this task created it.
"""


def file(path: str, content: str | bytes | Secret, *, mode: int | str | None = None,
         owner: str | None = None, group: str | None = None,
         name: str | None = None) -> FileTask:
    """Ensure the regular file at ``path`` holds ``content``, with the given attributes.

    Args:
        path: absolute path of the file.
        content: the wanted content: text (written as UTF-8), bytes, or a
            :class:`~deploykit.secrets.Secret`, which never appears in diffs,
            messages or logs.
        mode: wanted mode (``0o640`` or ``"0640"``); None keeps an existing
            file's mode (a new one gets 0644).
        owner, group: wanted owner and group (names or ids); None keeps an
            existing file's (a new one gets the login user's).
        name: the step's name in reports (default ``files.file <path>``).
    """
    return FileTask(path, content, mode=mode, owner=owner, group=group, name=name)


file.__doc__ = (file.__doc__ or "") + _CONTENT_DOC


class TemplateTask(_ContentTask):
    """A regular file at ``path`` holds a Jinja2 template rendered with the host's vars."""

    kind = "files.template"

    def __init__(self, path: str, source: str | Path | None = None, *,
                 template_string: str | None = None, vars: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        if (source is None) == (template_string is None):
            raise ConfigError("template: give exactly one of source (a template file) "
                              "or template_string")
        self.source = Path(source) if source is not None else None
        self.template_string = template_string
        self.vars: Mapping[str, Any] = dict(vars or {})
        self.template_name = str(self.source) if self.source else "<template_string>"
        self._env: Any = None

    @property
    def secrets(self) -> list[Secret]:
        return _reveal(self.vars)[1]

    def desired(self, conn: Connection, facts: Facts) -> Desired:
        # Secrets render as their real value (a template writes the real password);
        # the connection redacts them everywhere, and a result holding one is secret.
        facts_of_host = {"inventory_hostname": conn.host.name,
                         "group_names": list(conn.host.groups)}
        values, secrets = _reveal({**facts_of_host, **conn.host.vars, **self.vars})
        conn.secrets.update(secrets)
        text = self.render(values)
        return Desired(text.encode(), secret=any(s.reveal() in text for s in secrets))

    def render(self, values: Mapping[str, Any]) -> str:
        """Render the template with ``values``.

        An undefined variable, a syntax error, a missing template file or any
        error while rendering raises :class:`TaskError` naming the template (and
        the line when known).
        """
        import jinja2  # imported here: it costs import time only when templates are used

        if self._env is None:
            loader = jinja2.FileSystemLoader(str(self.source.parent)) if self.source else None
            self._env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                                           keep_trailing_newline=True, autoescape=False)
        compiled = None
        try:
            if self.source is not None:
                compiled = self._env.get_template(self.source.name)
            else:
                compiled = self._env.from_string(self.template_string)
            text: str = compiled.render(values)
            return text
        except jinja2.UndefinedError as exc:
            # jinja2 rewrites the traceback: the template's own frames carry its lines
            filename = getattr(compiled, "filename", None) or "<template>"
            lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
                     if f.filename == filename]
            where = f"{self.template_name}:{lines[-1]}" if lines else self.template_name
            raise TaskError(f"template {where}: undefined variable: {exc.message}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TaskError(f"template {self.template_name}:{exc.lineno}: syntax error: "
                            f"{exc.message}") from None
        except jinja2.TemplateNotFound:
            raise TaskError(f"template {self.template_name}: file not found") from None
        except jinja2.TemplateError as exc:
            raise TaskError(f"template {self.template_name}: {exc.message}") from None
        except Exception as exc:  # a filter or an operator failed on a value
            raise TaskError(f"template {self.template_name}: {type(exc).__name__}: "
                            f"{exc}") from None


def _reveal(value: Any) -> tuple[Any, list[Secret]]:
    """``value`` with every Secret (in nested mappings and lists too) revealed, and them."""
    found: list[Secret] = []

    def walk(v: Any) -> Any:
        if isinstance(v, Secret):
            found.append(v)
            return v.reveal()
        if isinstance(v, Mapping):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(value), found


def template(path: str, source: str | Path | None = None, *,
             template_string: str | None = None, vars: Mapping[str, Any] | None = None,
             mode: int | str | None = None, owner: str | None = None, group: str | None = None,
             name: str | None = None) -> TemplateTask:
    """Render a Jinja2 template with the host's vars and ensure ``path`` holds the result.

    Args:
        path: absolute path of the file on the host.
        source: a local Jinja2 template file (``{% include %}`` resolves next to it).
        template_string: the template text itself, instead of ``source``.
        vars: extra variables, overriding the host's inventory vars of the same name.
            Besides its inventory vars, a template sees ``inventory_hostname`` and
            ``group_names``, as in Ansible.
            :class:`~deploykit.secrets.Secret` values render as their real value,
            and a result holding one is treated as secret content.
        mode, owner, group, name: as for :func:`file`.

    Rendering uses ``StrictUndefined``: a missing variable fails the step with a
    message naming the variable and the template (and line), and nothing is written.
    Rendering happens at plan time, once per host, with that host's vars.
    """
    return TemplateTask(path, source, template_string=template_string, vars=vars,
                        mode=mode, owner=owner, group=group, name=name)


template.__doc__ = (template.__doc__ or "") + _CONTENT_DOC


class CopyTask(_ContentTask):
    """A regular file at ``path`` holds the bytes of a local file."""

    kind = "files.copy"

    def __init__(self, path: str, source: str | Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.source = Path(source)
        self._cache: tuple[tuple[int, int], bytes] | None = None

    def desired(self, conn: Connection, facts: Facts) -> Desired:
        # Read the local file once and reuse it (for the SHA-256, the upload and the
        # re-probe) while its mtime and size stay the same.
        try:
            stat = self.source.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache
            if cached is None or cached[0] != key:
                cached = self._cache = (key, self.source.read_bytes())
        except OSError as exc:
            raise TaskError(f"cannot read local file {self.source}: "
                            f"{exc.strerror or exc}") from None
        return Desired(cached[1])


def copy(path: str, source: str | Path, *, mode: int | str | None = None, owner: str | None = None,
         group: str | None = None, name: str | None = None) -> CopyTask:
    """Upload the local file ``source`` to ``path``, if the host's copy differs.

    Args:
        path: absolute path of the file on the host.
        source: the local file; read once per run (its SHA-256 is compared with
            the host's, and the same bytes are uploaded).
        mode, owner, group, name: as for :func:`file` (the local file's mode is
            not copied).
    """
    return CopyTask(path, source, mode=mode, owner=owner, group=group, name=name)


copy.__doc__ = (copy.__doc__ or "") + _CONTENT_DOC


State = Literal["present", "absent"]


class LineInFileTask(_ContentTask):
    """A line is present in (or absent from) a text file, Ansible lineinfile style."""

    kind = "files.line_in_file"

    def __init__(self, path: str, line: str | None, *, regexp: str | None = None,
                 insert_after: str | None = None, insert_before: str | None = None,
                 state: State = "present", create: bool = False, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        if state not in ("present", "absent"):
            raise ConfigError(f"line_in_file: state must be 'present' or 'absent', not {state!r}")
        if line is None and (state == "present" or regexp is None):
            raise ConfigError("line_in_file: line is required (except state='absent' "
                              "with a regexp)")
        if line is not None and ("\n" in line or "\r" in line):
            raise ConfigError("line_in_file: line must be a single line")
        if insert_after is not None and insert_before is not None:
            raise ConfigError("line_in_file: give insert_after or insert_before, not both")
        for pattern in (regexp, insert_after, insert_before):
            if pattern is not None and pattern not in ("BOF", "EOF"):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"line_in_file: bad regular expression {pattern!r}: "
                                      f"{exc}") from None
        self.line, self.regexp, self.state, self.create = line, regexp, state, create
        self.insert_after, self.insert_before = insert_after, insert_before

    def probe_requests(self) -> Sequence[FactRequest] | None:
        return (path_request(self.path), content_request(self.path, limit=LINE_FILE_LIMIT))

    def parse(self, output: str) -> Facts:
        return {"path": parse_path(output), "content": parse_content(output)}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        current: PathFacts = facts["path"]
        if not current.exists:
            if self.state == "absent":
                return Plan()
            if not self.create:
                raise self.error(conn, "does not exist (create=True creates it)")
        return super().plan(conn, facts)

    def desired(self, conn: Connection, facts: Facts) -> Desired:
        current: PathFacts = facts["path"]
        old: bytes | None = facts.get("content")
        if current.exists and old is None:
            raise self.error(conn, f"too large to edit ({current.size} bytes, "
                                   f"limit {LINE_FILE_LIMIT // 1024} KiB)")
        text = (old or b"").decode("utf-8", "surrogateescape")
        new = edit_lines(text, self.line, regexp=self.regexp, insert_after=self.insert_after,
                         insert_before=self.insert_before, state=self.state)
        return Desired(new.encode("utf-8", "surrogateescape"))


def edit_lines(text: str, line: str | None, *, regexp: str | None = None,
               insert_after: str | None = None, insert_before: str | None = None,
               state: State = "present") -> str:
    """Return ``text`` edited the way Ansible's lineinfile edits a file.

    ``absent``: every line matching ``regexp`` (else equal to ``line``) is removed.
    ``present``: the *last* line matching ``regexp`` is replaced by ``line``; if
    none matches and ``line`` is already there, nothing changes; otherwise
    ``line`` is inserted after (``insert_after``) or before (``insert_before``)
    the last line matching that regex, at the start (``"BOF"``) or end
    (``"EOF"``, the default, and the fallback when the regex matches nothing).
    Line endings are kept; a last line without a newline gets one before an append.
    """
    lines = text.splitlines(keepends=True)
    bare = [x.rstrip("\r\n") for x in lines]
    if state == "absent":
        pattern = re.compile(regexp) if regexp is not None else None
        return "".join(x for x, b in zip(lines, bare, strict=True)
                       if not (pattern.search(b) if pattern else b == line))
    assert line is not None
    found = -1
    if regexp is not None:
        pattern = re.compile(regexp)
        found = max((i for i, b in enumerate(bare) if pattern.search(b)), default=-1)
    if found == -1:
        found = max((i for i, b in enumerate(bare) if b == line), default=-1)
    if found != -1:
        lines[found] = line + lines[found][len(bare[found]):]
        return "".join(lines)
    anchor = insert_after if insert_after is not None else insert_before
    at = len(lines)
    if anchor == "BOF":
        at = 0
    elif anchor is not None and not (anchor == "EOF" and insert_after is not None):
        pattern = re.compile(anchor)
        matches = [i for i, b in enumerate(bare) if pattern.search(b)]
        if matches:
            at = matches[-1] + (1 if insert_after is not None else 0)
    if at == len(lines) and lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n"
    lines.insert(at, line + "\n")
    return "".join(lines)


def line_in_file(path: str, line: str | None = None, *, regexp: str | None = None,
                 insert_after: str | None = None, insert_before: str | None = None,
                 state: State = "present", create: bool = False, mode: int | str | None = None,
                 owner: str | None = None, group: str | None = None,
                 name: str | None = None) -> LineInFileTask:
    """Ensure a line is in a text file (or not), with Ansible lineinfile semantics.

    Args:
        path: absolute path of the file (at most 1 MiB: the probe reads it).
        line: the wanted line, without newline. Optional only for
            ``state="absent"`` with a ``regexp``.
        regexp: a Python regex; with ``present`` the last matching line is replaced
            by ``line``; with ``absent`` every matching line is removed.
        insert_after, insert_before: where to add ``line`` when nothing matches:
            after/before the last line matching this regex, or ``"BOF"`` / ``"EOF"``
            (default: end of file, also when the regex matches no line).
        state: ``"present"`` or ``"absent"``.
        create: create the file when it is missing (else a missing file is an
            error for ``present``, and ``ok`` for ``absent``).
        mode, owner, group, name: as for :func:`file`.

    Idempotence: the new content is computed in Python (:func:`edit_lines`) from
    the content the probe read; ``ok`` when it equals the current content.
    The file is written atomically with :meth:`Connection.put`.
    Check mode: reports the unified diff.
    Undo: restores the previous content and attributes, or removes a created file.
    """
    return LineInFileTask(path, line, regexp=regexp, insert_after=insert_after,
                          insert_before=insert_before, state=state, create=create,
                          mode=mode, owner=owner, group=group, name=name)


# -- symlink and absent -------------------------------------------------------


def _link_command(path: str, target: str) -> str:
    """Point the link ``path`` at ``target`` atomically: a new link, then ``mv -T``."""
    p = quote(path)
    return (f'set -e; tmp=$(mktemp -u "$(dirname -- {p})/.dk-link.XXXXXX"); '
            f'ln -s -- {quote(target)} "$tmp"; '
            f'mv -T -f -- "$tmp" {p} || {{ rm -f -- "$tmp"; exit 1; }}')


class SymlinkTask(_PathTask):
    """``path`` is a symbolic link pointing at ``link_to``."""

    kind = "files.symlink"

    def __init__(self, path: str, target: str, *, force: bool = False,
                 name: str | None = None) -> None:
        super().__init__(path, name=name)
        if not target:
            raise ConfigError("symlink: target must not be empty")
        self.link_to = target
        self.force = force

    def touches(self) -> Sequence[str] | None:
        """Unknown: paths through the link now lead elsewhere; later steps probe afresh."""
        return None

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        current: PathFacts = facts["path"]
        plan = Plan()
        if current.type == "link":
            if current.link_target != self.link_to:
                plan.add("target", current.link_target, self.link_to)
        elif not current.exists:
            plan.add("state", "absent", f"link to {self.link_to}")
        elif current.type == "file" and self.force:
            plan.add("state", "file", f"link to {self.link_to}")
        elif current.type == "file":
            raise self.error(conn, "exists and is a regular file (force=True replaces it)")
        else:
            raise self.error(conn, f"exists and is a {current.type}; it is never replaced "
                                   "by a link (remove it first)")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        current: PathFacts = facts["path"]
        if current.type == "link" and current.link_target is not None:
            old = current.link_target
            undo.push(f"point {self.path} back at {old}",
                      _undo_command(_link_command(self.path, old), self.name))
        elif current.type == "file":
            self.push_file_restore(conn, facts, undo)
        else:
            undo.push(f"remove link {self.path}",
                      _undo_command(f"rm -f -- {quote(self.path)}", self.name))
        conn.run(_link_command(self.path, self.link_to), task=self.name)


def symlink(path: str, target: str, *, force: bool = False,
            name: str | None = None) -> SymlinkTask:
    """Ensure ``path`` is a symbolic link to ``target``.

    Args:
        path: absolute path of the link.
        target: what the link points to, stored as given (may be relative).
        force: replace a regular file at ``path`` (never a directory).
        name: the step's name in reports (default ``files.symlink <path>``).

    Idempotence: ``ok`` when ``path`` is a link whose target is exactly ``target``.
    The switch is atomic (a new link under a temporary name, then ``mv -T``):
    readers see the old target or the new one, never no link.
    Check mode: reports ``target: old -> new`` or ``state: absent -> link to ...``.
    Undo: points the link back at its old target, restores a replaced file
    (up to 1 MiB), or removes a link this task created.
    """
    return SymlinkTask(path, target, force=force, name=name)


class AbsentTask(_PathTask):
    """Nothing exists at ``path``."""

    kind = "files.absent"

    def __init__(self, path: str, *, name: str | None = None) -> None:
        super().__init__(path, name=name)
        if posixpath.normpath(self.path).strip("/") == "":
            raise ConfigError(f"absent: refusing to remove {path!r}")

    def touches(self) -> Sequence[str] | None:
        """Unknown: a removed directory takes everything under it; later steps probe afresh."""
        return None

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        current: PathFacts = facts["path"]
        plan = Plan()
        if current.exists:
            plan.add("state", current.type, "absent")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        current: PathFacts = facts["path"]
        p = quote(self.path)
        if current.type == "file":
            self.push_file_restore(conn, facts, undo)
        elif current.type == "link" and current.link_target is not None:
            old = current.link_target
            undo.push(f"recreate link {self.path}",
                      _undo_command(_link_command(self.path, old), self.name))
        else:
            undo.push(f"restore {self.path}", _undo_impossible(
                f"{self.path} was a {current.type}; removed directories and special "
                "files cannot be restored"))
        conn.run(f"rm -rf -- {p}" if current.type == "directory" else f"rm -f -- {p}",
                 task=self.name)


def absent(path: str, *, name: str | None = None) -> AbsentTask:
    """Ensure nothing exists at ``path``: remove a file, link or whole directory.

    Args:
        path: absolute path to remove; ``/`` (or anything resolving to it) is refused.
        name: the step's name in reports (default ``files.absent <path>``).

    Idempotence: ``ok`` when the path does not exist.
    A link is removed itself, never what it points to; a directory with ``rm -rf``.
    Check mode: reports ``state: file -> absent`` (or directory, link).
    Undo: a removed regular file up to 1 MiB is restored with its content, mode and
    owner (read before removal); a removed link is recreated. Directories (and
    larger files) are NOT restorable: undo reports them as not undone.
    """
    return AbsentTask(path, name=name)
