"""Facts: read-only probe snippets and the parsers of their output.

A fact comes in two halves, like pyinfra's ``command()`` / ``process()``: a
shell snippet that prints what it reads (:func:`path_script`,
:func:`content_script`) and a parser that turns that output into a value
(:func:`parse_path`, :func:`parse_content`). Tasks put the snippets in their
``probe_script`` so that the runner can batch many probes in one round trip;
a snippet therefore never fails (an absent path prints ``absent``) and prints
only its own line.

The path line is ``type mode owner group uid gid size sha256 link_target``::

    file 644 root root 0 0 12 5891b5b5...0a27 -
    link 777 root root 0 0 11 - L3Nydi9hcHAvdjI=
    directory 2755 www-data www-data 33 33 4096 - -
    absent

``mode`` is octal, ``sha256`` is ``-`` unless the path is a regular file
(and the checksum was asked for), ``link_target`` is base64 (a link target
may hold any byte, spaces and newlines included) or ``-``.

Both snippets also exist as :class:`FactRequest` values, which
:func:`python_probe` answers for many paths at once with **one** ``python3``
process printing exactly what the snippets print: the runner's batched probe of
a whole host then starts one process instead of two or three per path (stat,
sha256sum, base64: about 76 processes for the benchmark's 27 steps). Hosts
without python3 run the snippets.

The module also holds the small helpers file tasks share: modes given as
``0o644`` or ``"0644"``, and the unified diff of two contents.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from deploykit.errors import ConfigError, TaskError
from deploykit.shell import quote

__all__ = [
    "ABSENT",
    "DIFF_LIMIT",
    "FactRequest",
    "PathFacts",
    "content_diff",
    "content_script",
    "diff_note",
    "format_mode",
    "parse_content",
    "parse_mode",
    "parse_path",
    "path_script",
    "python_probe",
    "request_script",
]

DIFF_LIMIT = 256 * 1024
"""Contents larger than this (bytes) get no unified diff, only a note."""

PATH_TYPES = ("file", "directory", "link", "other", "absent")


@dataclass(frozen=True)
class PathFacts:
    """What is at a path on a host: one parsed :func:`path_script` line.

    ``type`` is ``file``, ``directory``, ``link``, ``other`` (device, socket,
    fifo) or ``absent``; the other fields are None for an absent path.
    Attributes of a link are the link's own, not its target's.
    """

    exists: bool
    type: str
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    sha256: str | None = None
    link_target: str | None = None

    def owned_by(self, owner: str | None, group: str | None) -> tuple[bool, bool]:
        """``(owner matches, group matches)``; a None wish matches, digits compare as ids."""

        def same(wish: str | None, name: str | None, ident: int | None) -> bool:
            if wish is None:
                return True
            return wish == str(ident) if wish.isdigit() else wish == name

        return same(owner, self.owner, self.uid), same(group, self.group, self.gid)


ABSENT = PathFacts(exists=False, type="absent")


def path_script(path: str, *, checksum: bool = True) -> str:
    """A snippet printing :class:`PathFacts` lines for ``path``.

    ``<type> <mode> <owner> <group> <uid> <gid> <size>``, then ``sha256 <hex>``
    for a regular file (with ``checksum``: the content itself never travels) or
    ``target <base64>`` for a symlink. Never fails: a missing path prints
    ``absent``. Costs two programs at most (stat, sha256sum): with dozens of
    probes per host on many hosts, each process spawned counts.
    """
    p = quote(path)
    stat = f"stat -c '%a %U %G %u %g %s' -- {p}"
    digest = f"printf 'sha256 '; sha256sum < {p}; " if checksum else ""
    return (
        f"if [ -L {p} ]; then printf 'link '; {stat}; printf 'target '; "
        f"readlink -n -- {p} | base64 -w0; echo; "
        f"elif [ -f {p} ]; then printf 'file '; {stat}; {digest}"
        f"elif [ -d {p} ]; then printf 'directory '; {stat}; "
        f"elif [ -e {p} ]; then printf 'other '; {stat}; "
        f"else echo absent; fi"
    )


def parse_path(output: str) -> PathFacts:
    """Parse :func:`path_script` output.

    Raises :class:`TaskError` for output the snippet cannot have printed (the
    path vanished between tests, or stat failed), so a task fails with the
    reason instead of acting on wrong facts.
    """
    lines = output.strip().splitlines()
    line = lines[0] if lines else ""
    fields = line.split()
    if fields == ["absent"]:
        return ABSENT
    if len(fields) != 7 or fields[0] not in PATH_TYPES:
        raise TaskError(f"unexpected path probe output: {line!r}")
    kind, mode, owner, group, uid, gid, size = fields
    extra = dict(x.split(" ", 1) for x in lines[1:] if " " in x)
    digest = extra.get("sha256", "").split(" ", 1)[0] or None
    link = extra.get("target")
    try:
        target = None if link is None else base64.b64decode(link, validate=True).decode(
            "utf-8", "surrogateescape")
        if digest is not None and len(digest) != 64:
            raise ValueError(digest)
        return PathFacts(
            exists=True, type=kind, mode=int(mode, 8), owner=owner, group=group,
            uid=int(uid), gid=int(gid), size=int(size), sha256=digest, link_target=target,
        )
    except (ValueError, binascii.Error):
        raise TaskError(f"unexpected path probe output: {output.strip()!r}") from None


def content_script(path: str, *, limit: int) -> str:
    """A snippet printing ``content <base64>`` for a regular file of at most ``limit``
    bytes, ``content-too-large`` for a bigger one, and nothing otherwise."""
    p = quote(path)
    return (
        f"if [ -f {p} ] && [ ! -L {p} ]; then "
        f'if [ "$(stat -c %s -- {p})" -le {int(limit)} ]; '
        f"then printf 'content '; base64 -w0 < {p}; echo; "
        f"else echo content-too-large; fi; fi"
    )


def parse_content(output: str) -> bytes | None:
    """The file content from :func:`content_script` output; None when it printed none
    or the file was too large (then the path facts say why)."""
    for line in output.splitlines():
        if line == "content ":
            return b""
        if line.startswith("content "):
            try:
                return base64.b64decode(line[len("content "):], validate=True)
            except binascii.Error:
                raise TaskError("unexpected content probe output (bad base64)") from None
    return None


def parse_mode(mode: int | str | None) -> int | None:
    """A file mode given as ``0o644``, ``"0644"`` or ``"644"``, as an int (None stays None)."""
    if mode is None:
        return None
    if isinstance(mode, str):
        try:
            value = int(mode, 8)
        except ValueError:
            raise ConfigError(f"mode {mode!r} is not an octal number like '0644'") from None
    else:
        value = mode
    if not 0 <= value <= 0o7777:
        raise ConfigError(f"mode {mode!r} is out of range (0000 to 7777 octal)")
    return value


def format_mode(mode: int | None) -> str | None:
    """``0o644`` -> ``"0644"``, as reports show modes."""
    return None if mode is None else f"{mode:04o}"


def _text(data: bytes) -> str | None:
    """The content as text, or None when it looks binary (NUL byte or not UTF-8)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def diff_note(old_size: int, new: bytes) -> str | None:
    """Why no diff is shown between an old content of ``old_size`` bytes and ``new``
    (one is over :data:`DIFF_LIMIT`, or ``new`` is binary), or None when one can be.
    Lets a task skip fetching the old content when no diff would be shown anyway."""
    if max(old_size, len(new)) > DIFF_LIMIT:
        return (f"(no diff: content larger than {DIFF_LIMIT // 1024} KiB; "
                f"{old_size} -> {len(new)} bytes)")
    if _text(new) is None:
        return f"(no diff: binary content; {old_size} -> {len(new)} bytes)"
    return None


def content_diff(old: bytes | None, new: bytes, path: str) -> str:
    """A unified diff from ``old`` (None: the file does not exist) to ``new``.

    Binary contents and contents over :data:`DIFF_LIMIT` get a one-line note
    instead, saying why no diff is shown.
    """
    before = old or b""
    note = diff_note(len(before), new)
    if note is not None:
        return note
    old_text, new_text = _text(before), _text(new)
    if old_text is None or new_text is None:
        return f"(no diff: binary content; {len(before)} -> {len(new)} bytes)"
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
        fromfile="/dev/null" if old is None else path, tofile=path)
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines).rstrip("\n")


# -- many paths in one process --------------------------------------------------------------


@dataclass(frozen=True)
class FactRequest:
    """One read a file task needs: ``path`` facts (:func:`path_script`) or a file's
    ``content`` (:func:`content_script`), as a value the runner can batch."""

    kind: Literal["path", "content"]
    path: str
    checksum: bool = True
    limit: int = 0


def path_request(path: str, *, checksum: bool = True) -> FactRequest:
    """The :func:`path_script` read of ``path`` as a request."""
    return FactRequest("path", path, checksum=checksum)


def content_request(path: str, *, limit: int) -> FactRequest:
    """The :func:`content_script` read of ``path`` as a request."""
    return FactRequest("content", path, limit=limit)


def request_script(requests: Sequence[FactRequest]) -> str:
    """The shell snippets printing what ``requests`` ask for, in order."""
    return "\n".join(path_script(r.path, checksum=r.checksum) if r.kind == "path"
                     else content_script(r.path, limit=r.limit) for r in requests)


# Runs on the host under python3 (3.6 or later, standard library only), given the
# requests as JSON in argv[1]; prints what the shell snippets print, one section per
# task between marker lines, then one "canonical" section listing the tasks none of
# whose paths goes through a symlink (their facts can be kept across other changes).
_PROBE_PROGRAM = r"""
import base64, grp, hashlib, json, os, pwd, stat, sys
marker, tasks = json.loads(sys.argv[1])
out = sys.stdout.buffer
def name(lookup, ident):
    try:
        return lookup(ident)[0]
    except KeyError:
        return "UNKNOWN"
def attrs(st):
    return "%o %s %s %d %d %d" % (st.st_mode & 0o7777, name(pwd.getpwuid, st.st_uid),
                                  name(grp.getgrgid, st.st_gid), st.st_uid, st.st_gid,
                                  st.st_size)
def digest(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest() + "  -"
def path_facts(path, checksum):
    try:
        st = os.lstat(path)
    except OSError:
        return "absent\n"
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        target = base64.b64encode(os.readlink(path)).decode()
        return "link %s\ntarget %s\n" % (attrs(st), target)
    if stat.S_ISREG(mode):
        return "file %s\n" % attrs(st) + ("sha256 %s\n" % digest(path) if checksum else "")
    kind = "directory" if stat.S_ISDIR(mode) else "other"
    return "%s %s\n" % (kind, attrs(st))
def content(path, limit):
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    if not stat.S_ISREG(st.st_mode):
        return ""
    if st.st_size > limit:
        return "content-too-large\n"
    try:
        with open(path, "rb") as f:
            return "content %s\n" % base64.b64encode(f.read()).decode()
    except OSError:
        return "content \n"
canonical = []
for index, requests in tasks:
    text, plain = [], True
    for kind, encoded, checksum, limit in requests:
        path = base64.b64decode(encoded)
        parent = os.path.dirname(path) or b"/"
        plain = plain and os.path.realpath(parent) == parent
        text.append(path_facts(path, checksum) if kind == "path" else content(path, limit))
    out.write(("%s %d\n%s\n" % (marker, index, "".join(text))).encode())
    if plain:
        canonical.append(str(index))
out.write(("%s canonical\n%s\n" % (marker, " ".join(canonical))).encode())
"""


def python_probe(marker: str, tasks: Sequence[tuple[int, Sequence[FactRequest]]]) -> str:
    """A shell command answering every task's requests with one python3 process.

    Prints, per task, ``<marker> <index>`` then exactly what :func:`request_script`
    would print, then an empty line; last, ``<marker> canonical`` and the indexes of
    the tasks none of whose paths has a symlink among its parent directories.
    """
    payload = [[index, [[r.kind, base64.b64encode(r.path.encode("utf-8", "surrogateescape"))
                         .decode(), r.checksum, r.limit] for r in requests]]
               for index, requests in tasks]
    return (f"python3 -I -S -c {quote(_PROBE_PROGRAM)} "
            f"{quote(json.dumps([marker, payload], separators=(',', ':')))}")
