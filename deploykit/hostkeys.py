"""known_hosts read as OpenSSH reads it, for strict host key checking over paramiko.

paramiko's own loader stops at the first line it does not understand (an
``@cert-authority`` or ``@revoked`` marker raised ``InvalidHostKey`` and a traceback)
and matches host names exactly. :func:`load_known_hosts` reads every line OpenSSH
reads (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT"):

* plain lines ``patterns keytype base64 [comment]``: comma-separated patterns with
  ``*`` and ``?`` wildcards and ``!`` negation, hashed names (``|1|salt|hash``),
  ``[host]:port`` for a port other than 22;
* ``@revoked`` lines: that key is refused for the matching hosts, even when another
  line lists it (:class:`KnownHosts.revoked`);
* ``@cert-authority`` lines: a CA signing host certificates. paramiko cannot verify
  host certificates, so they never make a host trusted; a host known only through
  one is refused with a message saying so and how to trust its own key;
* lines it cannot parse (an unknown key type) are skipped, as OpenSSH skips them.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

log = logging.getLogger("deploykit.hostkeys")

__all__ = ["KnownHostEntry", "KnownHosts", "host_pattern_name", "load_known_hosts"]


def host_pattern_name(address: str, port: int) -> str:
    """The name known_hosts uses for ``address:port`` (``[address]:port`` unless 22)."""
    return address if port == 22 else f"[{address}]:{port}"


def _matches(patterns: str, name: str) -> bool:
    """OpenSSH's match_hostname: any positive pattern matches and no negated one does."""
    if patterns.startswith("|1|"):
        salt = patterns.split("|")[2] if patterns.count("|") >= 3 else ""
        try:
            return paramiko.HostKeys.hash_host(name, salt) == patterns
        except (binascii.Error, ValueError):
            return False
    found = False
    for pattern in patterns.lower().split(","):
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(name.lower(), pattern[1:] if negated else pattern):
            if negated:
                return False
            found = True
    return found


@dataclass(frozen=True)
class KnownHostEntry:
    """One usable line: its marker (``""``, ``@revoked``, ``@cert-authority``), host
    patterns, key and where it is (for messages)."""

    marker: str
    patterns: str
    key: paramiko.PKey
    path: str
    line: int

    def matches(self, name: str) -> bool:
        """True when this line applies to the host known as ``name``."""
        return _matches(self.patterns, name)


@dataclass
class KnownHosts:
    """Every usable line of a known_hosts file."""

    path: str
    entries: list[KnownHostEntry] = field(default_factory=list)

    def keys_for(self, name: str) -> list[paramiko.PKey]:
        """The trusted (plain, not revoked) keys of the host known as ``name``."""
        revoked = {self._blob(e.key) for e in self.entries
                   if e.marker == "@revoked" and e.matches(name)}
        return [e.key for e in self.entries
                if not e.marker and e.matches(name) and self._blob(e.key) not in revoked]

    def revoked(self, name: str, key: paramiko.PKey) -> KnownHostEntry | None:
        """The ``@revoked`` line refusing ``key`` for ``name``, if any."""
        for entry in self.entries:
            if (entry.marker == "@revoked" and entry.matches(name)
                    and self._blob(entry.key) == self._blob(key)):
                return entry
        return None

    def authorities_for(self, name: str) -> list[KnownHostEntry]:
        """The ``@cert-authority`` lines that apply to ``name``."""
        return [e for e in self.entries if e.marker == "@cert-authority" and e.matches(name)]

    def host_keys(self, name: str) -> paramiko.HostKeys:
        """A paramiko HostKeys holding only ``name``'s trusted keys (what SSHClient checks)."""
        keys = paramiko.HostKeys()
        for key in self.keys_for(name):
            keys.add(name, key.get_name(), key)
        return keys

    @staticmethod
    def _blob(key: paramiko.PKey) -> bytes:
        return key.asbytes()


def _parse_line(text: str, path: str, number: int) -> KnownHostEntry | None:
    fields = text.split()
    marker = ""
    if fields and fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
        if marker not in ("@revoked", "@cert-authority"):
            log.debug("%s:%d: unknown marker %s, line skipped", path, number, marker)
            return None
    if len(fields) < 3:
        log.debug("%s:%d: not a known_hosts line, skipped", path, number)
        return None
    patterns, keytype, blob = fields[:3]
    try:
        key = paramiko.PKey.from_type_string(keytype, base64.b64decode(blob, validate=True))
    except (binascii.Error, ValueError, paramiko.SSHException) as exc:
        log.debug("%s:%d: key of type %s not usable (%s), line skipped", path, number,
                  keytype, exc)
        return None
    return KnownHostEntry(marker, patterns, key, path, number)


def load_known_hosts(path: str | Path) -> KnownHosts:
    """Read a known_hosts file (OSError when it cannot be read; a missing file is empty)."""
    known = KnownHosts(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return known
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line, str(path), number)
        if entry is not None:
            known.entries.append(entry)
    return known
