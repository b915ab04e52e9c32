"""How to reach a host: OpenSSH client config, jump hosts, as Ansible and Fabric read them.

:func:`resolve` turns an inventory :class:`~deploykit.inventory.Host` into the host
to connect to and the jump hosts to go through:

* **ssh_config** (read with paramiko's ``SSHConfig``, as Fabric does): the file named
  by the ``ssh_config`` host var, else ``~/.ssh/config`` when it exists
  (``ssh_config: none`` reads none). The host's ``address`` is looked up as ssh
  would look up its command-line argument: ``Host`` aliases and patterns, then
  ``HostName``, ``User``, ``Port``, ``IdentityFile`` (the first that exists) and
  ``ProxyJump`` apply. A setting written in the inventory (``user``, ``port``,
  ``identity_file``) wins over the file, as Ansible's inventory vars win over ssh's;
* **jump hosts**: the ``jump`` host var (``[user@]host[:port]``, a comma-separated
  chain, or the name of another inventory host), else ``-J`` / ``-o ProxyJump=`` in
  ``ansible_ssh_common_args``, else the file's ``ProxyJump``. Each jump host is itself
  looked up in the same file, logs in with the target's identity file unless the
  file names another, and has its key checked against the target's known_hosts file
  just as strictly: nothing is ever trusted on its own.

Host key checking settings in the file (``StrictHostKeyChecking no``) are never
honoured: deploykit always checks strictly.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from deploykit.errors import ConfigError

if TYPE_CHECKING:
    from deploykit.inventory import Host

__all__ = ["config_path", "jump_spec", "lookup", "parse_hop", "resolve"]

DEFAULT_CONFIG = "~/.ssh/config"
_MAX_HOPS = 8


def config_path(host: Host) -> str | None:
    """The ssh_config file for ``host``: its ``ssh_config`` var, else ``~/.ssh/config``
    when it exists; None for ``none``/``false`` or no file."""
    value = host.vars.get("ssh_config")
    if value is False or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    if value is None:
        default = Path(DEFAULT_CONFIG).expanduser()
        return str(default) if default.is_file() else None
    return os.path.expanduser(str(value))


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int) -> paramiko.SSHConfig:
    try:
        return paramiko.SSHConfig.from_path(path)
    except OSError as exc:
        raise ConfigError(f"cannot read ssh_config file {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ConfigError(f"ssh_config file {path} cannot be parsed: {exc}") from None


def lookup(path: str | None, alias: str) -> dict[str, Any]:
    """The settings ``path`` gives for ``alias`` (empty without a file)."""
    if path is None:
        return {}
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"cannot read ssh_config file {path}: {exc.strerror or exc}") from None
    try:
        return dict(_load(path, mtime).lookup(alias))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"ssh_config file {path}: cannot look up {alias!r}: {exc}") from None


def jump_spec(host: Host, found: Mapping[str, Any]) -> str | None:
    """The jump chain for ``host``: its ``jump`` var, else a ProxyJump in
    ``ansible_ssh_common_args``, else the ssh_config ``proxyjump`` (None: direct)."""
    value = host.vars.get("jump")
    if value:
        return str(value)
    args = host.vars.get("ansible_ssh_common_args")
    if args:
        try:
            words = shlex.split(str(args))
        except ValueError as exc:
            raise ConfigError(f"host {host.name!r}: ansible_ssh_common_args cannot be "
                              f"parsed: {exc}") from None
        for i, word in enumerate(words):
            following = words[i + 1] if i + 1 < len(words) else ""
            if word == "-J" and following:
                return following
            if word.startswith("-J") and len(word) > 2:
                return word[2:]
            option = following if word == "-o" else word[2:] if word.startswith("-o") else ""
            key, sep, val = option.replace(" ", "=", 1).partition("=")
            if sep and key.strip().lower() == "proxyjump" and val.strip():
                return val.strip()
    proxy = found.get("proxyjump")
    if proxy and str(proxy).lower() != "none":
        return str(proxy)
    return None


def parse_hop(text: str, where: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` (``[v6]:port`` too) as (user, host, port)."""
    rest = text.strip()
    if rest.startswith("ssh://"):
        rest = rest[len("ssh://"):]
    user, _, hostport = rest.rpartition("@")
    port: int | None = None
    if hostport.startswith("["):
        name, _, tail = hostport[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], text, where)
    elif hostport.count(":") == 1:
        name, _, number = hostport.partition(":")
        port = _port(number, text, where)
    else:
        name = hostport
    if not name:
        raise ConfigError(f"{where}: jump host {text!r} names no host")
    return user or None, name, port


def _port(text: str, spec: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{where}: jump host {spec!r}: the port must be a number in 1..65535")
    return int(text)


def _first_identity(found: Mapping[str, Any]) -> str | None:
    for path in found.get("identityfile", []):
        expanded = os.path.expanduser(str(path))
        if os.path.isfile(expanded):
            return expanded
    return None


def resolve(host: Host, *, inventory_hosts: Mapping[str, Host] | None = None,
            _depth: int = 0) -> tuple[Host, list[Host]]:
    """``host`` with its ssh_config applied, and its jump hosts, nearest to the
    controller first (each already resolved; the last one reaches ``host``).

    ``inventory_hosts``: a jump that names one of them uses its address, port and user.
    ConfigError for an unreadable file, a bad jump spec or a jump chain that loops.
    """
    if _depth > _MAX_HOPS:
        raise ConfigError(f"host {host.name!r}: more than {_MAX_HOPS} jump hosts (a ProxyJump "
                          "loop in the ssh_config?)")
    path = config_path(host)
    found = lookup(path, host.address)
    explicit = host.explicit
    changes: dict[str, Any] = {}
    if found.get("hostname") and found["hostname"] != host.address:
        changes["address"] = found["hostname"]
    if "port" not in explicit and found.get("port"):
        changes["port"] = _port(str(found["port"]), str(found["port"]),
                                f"{path}: Host {host.address}")
    if "user" not in explicit and found.get("user"):
        changes["user"] = found["user"]
    if host.identity_file is None:
        identity = _first_identity(found)
        if identity is not None:
            changes["identity_file"] = identity
    target = dataclasses.replace(host, **changes) if changes else host
    spec = jump_spec(host, found)
    if spec is None:
        return target, []
    hops: list[Host] = []
    previous: str | None = None
    for part in [p for p in spec.split(",") if p.strip()]:
        hop = _hop_host(part, host, target, inventory_hosts, previous)
        resolved, before = resolve(hop, inventory_hosts=inventory_hosts, _depth=_depth + 1)
        if not hops:
            hops.extend(before)  # a first hop with its own ProxyJump in the file
        hops.append(resolved)
        previous = part
    return target, hops


def _hop_host(part: str, host: Host, target: Host, inventory_hosts: Mapping[str, Host] | None,
              previous: str | None) -> Host:
    """The Host for one jump ``part`` of ``host``'s chain (reached through ``previous``)."""
    user, name, port = parse_hop(part, f"host {host.name!r}")
    known = inventory_hosts.get(name) if inventory_hosts else None
    base_vars: dict[str, Any] = {}
    if "ssh_config" in host.vars:
        base_vars["ssh_config"] = host.vars["ssh_config"]
    if previous:
        base_vars["jump"] = previous
    if known is not None:
        return dataclasses.replace(
            known, name=f"{name} (jump host of {host.name})",
            user=user or known.user, port=port or known.port, vars=base_vars,
            explicit=known.explicit | {k for k, v in (("user", user), ("port", port)) if v})
    return dataclasses.replace(
        target, name=f"{name} (jump host of {host.name})", address=name,
        port=port or 22, user=user or target.user, password=None, become=False,
        vars=base_vars, groups=(),
        explicit=frozenset(k for k, v in (("user", user), ("port", port)) if v))
