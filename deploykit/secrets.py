"""Secrets: values that must never reach a log, a report or an error message.

A secret may also come from a **source** on the controller, named by a reference
in ``deploykit.yml`` or in an inventory value:

=====================  ===================================================================
``${env:NAME}``        the controller's environment variable ``NAME`` (set, not empty)
``${file:PATH}``       a file's content, trailing newline stripped; PATH relative to the
                       file holding the reference; refused unless its mode is 0600 or
                       stricter (no access for group or others)
``${cmd:COMMAND}``     the stripped stdout of COMMAND (a password manager's CLI, e.g.
                       ``${cmd:pass show shop/db}``), run **without a shell**: the words
                       are split like a POSIX shell would (``shlex.split``: quotes work,
                       ``$VAR``, pipes and globs do not; write ``sh -c '...'`` for those),
                       in the project's directory, stdin from /dev/null, within 60 s
                       (``$DEPLOYKIT_SECRET_TIMEOUT``); run at most once per process. A
                       non-zero exit, a timeout or empty output is an error that shows
                       neither its stdout nor its stderr (they may hold the secret).
=====================  ===================================================================

Sources are resolved **lazily**: :func:`lazy` (and :func:`resolve_references` for a
whole inventory value) returns a :class:`LazySecret` that reads its source at its
first :meth:`~Secret.reveal`, so a command that never needs the value never runs the
password manager, and a missing one fails only where it is needed, naming the key
and the source.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from deploykit.errors import ConfigError

__all__ = ["FRAGMENT_MIN", "REDACTED", "SOURCES", "LazySecret", "Secret", "SecretMatcher",
           "lazy", "matcher_for", "redact",
           "resolve_references", "resolve_source", "reveal"]

REDACTED = "********"
SOURCES = ("env", "file", "cmd")
"""The controller-side secret sources a ``${kind:...}`` reference may name."""
CMD_TIMEOUT_ENV = "DEPLOYKIT_SECRET_TIMEOUT"


class Secret:
    """A secret value whose ``str`` and ``repr`` are redacted.

    Read the real value with :meth:`reveal` at the last moment (when building
    the remote command or the file content); everything that formats a
    ``Secret`` for people sees ``********``.

    >>> s = Secret("hunter2")
    >>> str(s), repr(s), s.reveal()
    ('********', 'Secret(********)', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = str(value)

    def reveal(self) -> str:
        """Return the real value. Only for building commands and files."""
        return self._value

    def peek(self) -> str | None:
        """The value when known without side effects (what :func:`redact` masks)."""
        return self.reveal()

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and not isinstance(other, LazySecret) \
            and other.reveal() == self.reveal()

    def __hash__(self) -> int:
        return hash(("Secret", self.reveal()))

    def __bool__(self) -> bool:
        return bool(self.reveal())

    def __len__(self) -> int:
        return len(self.reveal())


class LazySecret(Secret):
    """A :class:`Secret` read from its source at the first :meth:`reveal` (then kept).

    ``source`` is the reference as written (``${env:DB_PASSWORD}``), safe to show;
    ``cheap`` says the source can be read without side effects (env, file), which
    lets :func:`redact` mask it even before deploykit itself reveals it.
    """

    __slots__ = ("_lock", "_read", "cheap", "source")

    def __init__(self, source: str, read: Callable[[], str], *, cheap: bool = False) -> None:
        self.source = source
        self.cheap = cheap
        self._read = read
        self._lock = threading.Lock()

    @property
    def resolved(self) -> bool:
        """True once the source has been read."""
        return hasattr(self, "_value")

    def reveal(self) -> str:
        """Read the source (once; a ConfigError names the key and the source)."""
        with self._lock:
            if not hasattr(self, "_value"):
                self._value = self._read()
            return self._value

    def peek(self) -> str | None:
        if self.resolved or self.cheap:
            try:
                return self.reveal()
            except ConfigError:
                return None
        return None

    def __repr__(self) -> str:
        return f"LazySecret({self.source})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazySecret) and other.source == self.source

    def __hash__(self) -> int:
        return hash(("LazySecret", self.source))

    def __bool__(self) -> bool:
        return True  # a source never yields an empty value: reading an empty one fails

    def __copy__(self) -> LazySecret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LazySecret:
        return self


def reveal(value: object) -> object:
    """Return ``value`` with a top-level :class:`Secret` revealed; other values unchanged."""
    return value.reveal() if isinstance(value, Secret) else value


WINDOW = 12
"""Length of the pieces of a secret that are indexed to find its fragments."""
TEXT_STRIDE = 4
"""Text positions probed: every TEXT_STRIDE-th (the secret's pieces: every one, or every
``b``-th for a very long secret; ``b`` odd, so every alignment is met)."""
FRAGMENT_MIN = WINDOW + TEXT_STRIDE - 1
"""A run of this many characters of a secret (up to :data:`MAX_WINDOWS_PER_SECRET`
characters long) is masked as the secret: pytest prints truncated reprs (``'k3y...'``)."""
MAX_WINDOWS_PER_SECRET = 1 << 16
"""Pieces indexed per secret: memory and set-up bounded whatever the secret's size."""
FRAGMENT_SCAN_LIMIT = 16 << 20
"""Texts longer than this (a downloaded file) have whole values masked, not fragments."""


def _secret_stride(length: int) -> int:
    """Every how many positions a secret of ``length`` characters is indexed (odd)."""
    windows = length - WINDOW + 1
    stride = max(1, -(-windows // MAX_WINDOWS_PER_SECRET))
    return stride if stride % 2 else stride + 1


def fragment_floor(length: int) -> int:
    """The shortest run of a secret of ``length`` characters that is always masked."""
    return TEXT_STRIDE * _secret_stride(length) + WINDOW - 1


_URL_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*/?)")


def _public_prefix(value: str) -> int:
    """Length of the part of ``value`` that is not secret on its own: the scheme, host and
    port of a URL without user info (``https://hooks.example.com/``; what
    ``display_url`` shows). Its fragments are not masked; user info, path and query are."""
    match = _URL_ORIGIN.match(value)
    if not match:
        return 0
    return match.end(1) if "@" in match.group(2) else match.end()


def _match_length(a: str, i: int, b: str, j: int, limit: int, step: int) -> int:
    """How many characters ``a`` and ``b`` share going from ``i`` and ``j`` in direction
    ``step`` (+1 forwards from i/j, -1 backwards from i-1/j-1), at most ``limit``;
    compared in blocks (C speed), then character by character."""
    n, block = 0, 256
    while n < limit:
        size = min(block, limit - n)
        if step > 0:
            same = a[i + n:i + n + size] == b[j + n:j + n + size]
        else:
            same = a[i - n - size:i - n] == b[j - n - size:j - n]
        if not same:
            break
        n += size
    while n < limit and (a[i + n] == b[j + n] if step > 0 else a[i - n - 1] == b[j - n - 1]):
        n += 1
    return n


class SecretMatcher:
    """Finds secrets and their fragments in text; built once per set of secret values.

    Whole values are replaced first (``str.replace``, longest first). Fragments (not
    of a URL's scheme, host and port, which :func:`_public_prefix` leaves shown): the
    secrets' pieces of :data:`WINDOW` characters are indexed once (every one, or every
    ``b``-th of a secret longer than :data:`MAX_WINDOWS_PER_SECRET`), then every
    :data:`TEXT_STRIDE`-th position of a text is looked up, and a hit is extended both
    ways as far as text and secret agree. The cost is linear in the text's length and
    independent of the secrets' sizes; the index is bounded per secret.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted(set(values), key=len, reverse=True)
        self._index: dict[str, tuple[int, int]] = {}
        for k, value in enumerate(self.values):
            stride = _secret_stride(len(value))
            for j in range(_public_prefix(value), len(value) - WINDOW + 1, stride):
                self._index.setdefault(value[j:j + WINDOW], (k, j))

    def indexed_windows(self) -> int:
        """How many secret pieces the index holds."""
        return len(self._index)

    def redact(self, text: str) -> str:
        """``text`` with every secret, and every long fragment of one, as ``********``."""
        for value in self.values:
            if len(value) <= len(text) and value in text:
                text = text.replace(value, REDACTED)
        if not self._index or len(text) < WINDOW or len(text) > FRAGMENT_SCAN_LIMIT:
            return text
        spans: list[tuple[int, int]] = []
        covered = 0  # text before this index is already part of a span
        t = 0
        last = len(text) - WINDOW
        index = self._index
        while t <= last:
            hit = index.get(text[t:t + WINDOW])
            if hit is None:
                t += TEXT_STRIDE
                continue
            value = self.values[hit[0]]
            j = hit[1]
            back = _match_length(text, t, value, j,
                                 min(t - covered, j - _public_prefix(value)), -1)
            ahead = _match_length(text, t, value, j, min(len(text) - t, len(value) - j), 1)
            start, end = t - back, t + max(ahead, WINDOW)
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
            covered = spans[-1][1]
            t = max(t + TEXT_STRIDE, covered - WINDOW + 1)
            t += (-t) % TEXT_STRIDE
        if not spans:
            return text
        parts, at = [], 0
        for start, end in spans:
            while start < end and text[start].isspace():  # the words around stay apart
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            parts += [text[at:start], REDACTED]
            at = end
        parts.append(text[at:])
        return "".join(parts)


@functools.lru_cache(maxsize=64)
def _matcher(values: frozenset[str]) -> SecretMatcher:
    return SecretMatcher(values)


def matcher_for(values: Iterable[str]) -> SecretMatcher:
    """The (cached) :class:`SecretMatcher` of these secret values."""
    return _matcher(frozenset(v for v in values if v))


def redact(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every occurrence of each secret's value in ``text`` with ``********``, and
    every run of at least :data:`FRAGMENT_MIN` characters of one (see
    :class:`SecretMatcher`: linear in the text, whatever the secrets' sizes).

    Used on remote output and error messages before they are logged or
    reported, in case a command echoed a secret back. A :class:`LazySecret`
    not read yet is masked when its source is cheap (env, file); a command's
    output that deploykit never asked for cannot be in the text.
    """
    values = frozenset(v for s in secrets if (v := s.peek()))
    if not values or not text:
        return text
    return _matcher(values).redact(text)


# -- sources -----------------------------------------------------------------------------------

_SOURCE_REF = re.compile(r"\$\$|\$\{\s*(env|file|cmd):([^}]*)\}")
_cmd_cache: dict[tuple[str, str], str] = {}
_cmd_lock = threading.Lock()


def resolve_source(name: str, base: str | os.PathLike[str], where: str) -> str:
    """The value of the source ``name`` (``env:NAME``, ``file:PATH`` or ``cmd:COMMAND``).

    ``base`` is the directory relative paths (and commands) start from; ``where``
    names the key holding the reference, for errors. A ConfigError names the key
    and the source; a name that is not a source is a KeyError.
    """
    kind, _, rest = name.partition(":")
    rest = rest.strip()
    if kind == "env" and rest:
        value = os.environ.get(rest)
        if not value:
            raise ConfigError(f"{where}: environment variable {rest} is not set (or empty) "
                              f"(source ${{env:{rest}}})")
        return value
    if kind == "file" and rest:
        return _read_file(Path(base, os.path.expanduser(rest)), where)
    if kind == "cmd" and rest:
        return _run_command(rest, Path(base), where)
    raise KeyError(name)


def _read_file(path: Path, where: str) -> str:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where}: secret file {path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(f"{where}: secret file {path} has mode "
                              f"{stat.S_IMODE(mode):04o}: group or others may read it; a "
                              f"secret file must be 0600 or stricter (chmod 600 {path})")
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: secret file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{where}: secret file {path} is empty")
    return value


def _run_command(command: str, base: Path, where: str) -> str:
    """stdout of ``command`` (no shell), stripped; once per process per command."""
    key = (command, str(base))
    with _cmd_lock:
        if key in _cmd_cache:
            return _cmd_cache[key]
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"{where}: secret command `{command}` cannot be parsed: "
                              f"{exc}") from None
        if not argv:
            raise ConfigError(f"{where}: ${{cmd:}} names no command")
        timeout = float(os.environ.get(CMD_TIMEOUT_ENV) or 60)
        shown = f"secret command `{command}` (source ${{cmd:{command}}})"
        try:
            done = subprocess.run(argv, cwd=base if base.is_dir() else None,
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, check=False)
        except FileNotFoundError:
            raise ConfigError(f"{where}: {shown}: {argv[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{where}: {shown} did not finish within {timeout:g} s "
                              f"(${CMD_TIMEOUT_ENV} sets the limit)") from None
        except OSError as exc:
            raise ConfigError(f"{where}: {shown} cannot run: {exc.strerror}") from None
        if done.returncode != 0:
            raise ConfigError(f"{where}: {shown} exited with code {done.returncode} (its "
                              f"output is not shown: it may hold the secret; run the "
                              f"command yourself to see why)")
        value = done.stdout.decode("utf-8", "replace").strip()
        if not value:
            raise ConfigError(f"{where}: {shown} printed nothing")
        _cmd_cache[key] = value
        return value


def has_sources(text: str) -> bool:
    """True when ``text`` holds an ``${env:..}``, ``${file:..}`` or ``${cmd:..}`` reference."""
    return any(m.group(1) for m in _SOURCE_REF.finditer(text))


def lazy(text: str, base: str | os.PathLike[str], where: str) -> LazySecret:
    """``text`` with its source references (and ``$$``) resolved at the first reveal."""

    def read() -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return resolve_source(f"{match.group(1)}:{match.group(2)}", base, where)
        return _SOURCE_REF.sub(one, text)

    kinds = {m.group(1) for m in _SOURCE_REF.finditer(text) if m.group(1)}
    return LazySecret(text, read, cheap="cmd" not in kinds)


def resolve_references(value: Any, base: str | os.PathLike[str], where: str) -> Any:
    """``value`` with every string holding a source reference made a :class:`LazySecret`
    (recursively through mappings and lists); other values unchanged.

    For inventory values: ``password: ${cmd:pass show web/root}`` or a var
    ``postgres_password: ${env:PGPASSWORD}``. ``where`` prefixes the key path
    in errors (``inventory.yml: web-1.postgres_password``).
    """
    if isinstance(value, str) and not isinstance(value, Secret):
        return lazy(value, base, where) if has_sources(value) else value
    if isinstance(value, Mapping):
        return {k: resolve_references(v, base, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, base, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
