"""Ansible-style YAML inventories: hosts, groups, vars precedence and selectors.

::

    all:
      vars: {app: shop, user: deploy}
      hosts:
        bastion: {address: 198.18.0.5}
      children:
        web:
          vars: {app_port: 8000}
          hosts:
            web-1: {address: 198.18.0.11, port: 2222, vars: {weight: 5}}
            web-2: {address: 198.18.0.12, weight: 3}

Rules:

* The top level is a mapping with the single key ``all``; a group allows only
  ``hosts``, ``children`` and ``vars``. Groups are global by name: a group listed
  again under another group's ``children`` is the same group, and what each
  occurrence adds (vars, hosts, children) is merged. A group that is its own
  ancestor is an error.
* A host entry holds SSH settings (``address, port, user, identity_file,
  known_hosts, become, password``), a ``vars:`` mapping, and any other key,
  which is a host var. A key that is a near miss of a setting (``adress``) is
  an error; a var with such a name goes under ``vars:``.
* A host may appear in several groups and its entries merge: two entries giving
  one setting different values is an error; for plain vars the later entry wins.
* Vars precedence, lowest first: ``all`` < parent group < child group < host.
  Groups rank by depth (longest ``children`` path from ``all``), then by first
  appearance in the file, so among groups of equal depth the later one wins.
  Values replace whole; dicts are not deep-merged.
* Settings other than ``address`` may be group vars: they are defaults with the
  same precedence. Settings are taken out of ``Host.vars``; ``address`` is per
  host and required. ``password`` becomes a :class:`~deploykit.secrets.Secret`.
* ``identity_file``/``known_hosts``: ``~`` is expanded and relative paths are
  made absolute against the inventory file's directory (``base_dir``, or the
  current directory for :meth:`Inventory.from_dict` without one).
* Host and group names hold no whitespace, ``,`` or glob characters, and a name
  cannot be both a host and a group, so selectors are never ambiguous.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import yaml

from deploykit.errors import InventoryError
from deploykit.secrets import REDACTED, Secret, resolve_references
from deploykit.yamlsafe import MAX_DEPTH, YamlLimitError, check_node, check_size

__all__ = ["SETTINGS", "Host", "Inventory", "load_inventory"]

SETTINGS = ("address", "port", "user", "identity_file", "known_hosts", "become", "password")
"""Host keys that configure the SSH connection; every other host key is a var."""

_GROUP_KEYS = ("hosts", "children", "vars")
# settings that reach a socket, a command line or a file name: their allowed forms
_SETTING_FORMS: dict[str, tuple[re.Pattern[str], str]] = {
    "address": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._:%-]{0,252}"),
                "a host name or IP address (letters, digits, '.', '-', ':')"),
    "user": (re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?"),
             "a user name (letters, digits, '.', '_', '-'; at most 32)"),
    "identity_file": (re.compile(r"[^\x00-\x1f]{1,4096}"),
                      "a path without control characters (at most 4096)"),
    "known_hosts": (re.compile(r"[^\x00-\x1f]{1,4096}"),
                    "a path without control characters (at most 4096)"),
}
_BAD_NAME = re.compile(r"[\s,*?\[\]]")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Host:
    """One machine: how to reach it over SSH, its merged vars and its groups."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    known_hosts: str | None = None
    become: bool = False
    password: Secret | None = None
    vars: Mapping[str, Any] = field(default_factory=dict, hash=False)
    groups: tuple[str, ...] = ()
    explicit: frozenset[str] = field(default=frozenset(), compare=False)
    """The SSH settings the inventory wrote (they win over ssh_config's)."""


def _hop_of(host: Host) -> str:
    """``user@address:port`` of an inventory host named as another host's ``jump``."""
    address = f"[{host.address}]" if ":" in host.address else host.address
    return f"{host.user}@{address}:{host.port}"


class Inventory:
    """Hosts and groups loaded from a YAML file or a mapping; see the module docs."""

    def __init__(
        self, source: str, hosts: dict[str, Host], groups: dict[str, tuple[str, ...]]
    ) -> None:
        """Wrap already-validated hosts and groups; use :meth:`load` or :meth:`from_dict`."""
        self.source = source
        self.hosts = hosts
        self.groups = groups

    def __repr__(self) -> str:
        return f"Inventory({self.source!r}, {len(self.hosts)} hosts, {len(self.groups)} groups)"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Inventory:
        """Read and validate the YAML inventory at ``path``."""
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise InventoryError("inventory file not found", source=source) from None
        except (OSError, UnicodeDecodeError) as e:
            raise InventoryError(f"cannot read inventory: {e}", source=source) from e
        data = _parse_yaml(text, source)
        return cls.from_dict(data, source, os.path.dirname(os.path.abspath(source)))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "<dict>", base_dir: str | None = None
    ) -> Inventory:
        """Build an inventory from already-parsed data shaped like the YAML file."""
        parser = _Parser(source, base_dir if base_dir is not None else os.getcwd())
        parser.top(data)
        hosts, groups = parser.finish()
        return cls(source, hosts, groups)

    def host(self, name: str) -> Host:
        """Return the host called ``name``; unknown names raise InventoryError."""
        if name in self.hosts:
            return self.hosts[name]
        hint = _did_you_mean(name, self.hosts)
        raise InventoryError(
            f"unknown host {name!r}{hint}; hosts: {_listing(self.hosts)}", source=self.source
        )

    def select(self, selector: str) -> list[Host]:
        """Return the hosts matching ``selector``, unique and in inventory order.

        A selector is a comma list of host names, group names, globs matched
        against host and group names (``web-*``), ``all`` or ``*``. Every item
        must match at least one host.
        """
        items = [item.strip() for item in selector.split(",")]
        if not all(items):
            raise InventoryError(f"empty item in selector {selector!r}", source=self.source)
        chosen: set[str] = set()
        for item in items:
            found, groups = self._match(item)
            if not found:
                raise self._no_match(item, groups)
            chosen |= found
        return [host for name, host in self.hosts.items() if name in chosen]

    def _match(self, item: str) -> tuple[set[str], list[str]]:
        """Hosts and groups matched by one selector item."""
        if item == "*":
            return set(self.hosts), ["all"]
        if item in self.hosts:
            return {item}, []
        if item in self.groups:
            return set(self.groups[item]), [item]
        if not _GLOB.search(item):
            return set(), []
        found = {name for name in self.hosts if fnmatchcase(name, item)}
        groups = [name for name in self.groups if fnmatchcase(name, item)]
        for name in groups:
            found.update(self.groups[name])
        return found, groups

    def _no_match(self, item: str, groups: list[str]) -> InventoryError:
        """The error for a selector item that matched no host."""
        if groups:
            message = f"selector {item!r} matches no host (empty group: {', '.join(groups)})"
        else:
            hint = _did_you_mean(item, [*self.hosts, *self.groups])
            message = (
                f"selector {item!r} matches no host or group{hint}; "
                f"hosts: {_listing(self.hosts)}; groups: {_listing(self.groups)}"
            )
        return InventoryError(message, source=self.source)


def load_inventory(source: str | os.PathLike[str] | Mapping[str, Any]) -> Inventory:
    """Load an inventory from a YAML file path or from a mapping."""
    if isinstance(source, Mapping):
        return Inventory.from_dict(source)
    return Inventory.load(source)


# --- YAML loading ----------------------------------------------------------------------------


class _LineDict(dict[Any, Any]):
    """A YAML mapping that remembers the 1-based line of each of its keys."""

    key_lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and builds :class:`_LineDict` mappings."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_LineDict]:
    data = _LineDict()
    yield data
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = lines.get(key)
        except TypeError:  # unhashable: construct_mapping reports it with its mark
            continue
        if first is not None:
            raise InventoryError(f"duplicate key {key!r} (first at line {first})", line=line)
        lines[key] = line
    data.update(loader.construct_mapping(node))
    data.key_lines = lines


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; every failure becomes an InventoryError with a line.

    The document is checked against :mod:`deploykit.yamlsafe`'s limits (file size,
    one value's size, nesting, alias expansion) before anything is constructed.
    """
    try:
        check_size(text)
    except YamlLimitError as e:
        raise InventoryError(f"inventory too large: {e.message}", source=source) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        check_node(node)
        return None if node is None else loader.construct_document(node)
    except YamlLimitError as e:
        raise InventoryError(f"inventory refused: {e.message}", source=source, line=e.line,
                             field=e.field) from None
    except RecursionError:
        raise InventoryError(f"inventory refused: nested too deeply (over {MAX_DEPTH} levels)",
                             source=source) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = "; ".join(p for p in (e.context, e.problem) if p) or "syntax error"
        raise InventoryError(f"invalid YAML: {problem}", source=source, line=line) from None
    except yaml.YAMLError as e:
        raise InventoryError(f"invalid YAML: {e}", source=source) from None
    except InventoryError as e:
        e.source = source
        raise
    finally:
        loader.dispose()


# --- validation and merging ------------------------------------------------------------------


class _Loc(NamedTuple):
    """Where a value was written: dotted field path and 1-based line (None for dicts)."""

    field: str
    line: int | None


def _at(mapping: object, key: object, path: str) -> _Loc:
    return _Loc(path, getattr(mapping, "key_lines", {}).get(key))


def _where(loc: _Loc) -> str:
    return f"line {loc.line}" if loc.line is not None else loc.field


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _did_you_mean(word: object, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "(none)") + more


@dataclass
class _Group:
    order: int
    vars: dict[str, Any] = field(default_factory=dict)
    locs: dict[str, _Loc] = field(default_factory=dict)
    children: dict[str, _Loc] = field(default_factory=dict)


@dataclass
class _HostEntry:
    first: _Loc
    groups: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    locs: dict[str, _Loc] = field(default_factory=dict)


class _Parser:
    """Walks the inventory data once, then merges it into hosts and group members."""

    def __init__(self, source: str, base_dir: str) -> None:
        self.source = source
        self.base_dir = base_dir
        self.groups: dict[str, _Group] = {}
        self.hosts: dict[str, _HostEntry] = {}

    def error(self, message: str, loc: _Loc | None = None) -> InventoryError:
        return InventoryError(
            message,
            source=self.source,
            line=loc.line if loc else None,
            field=loc.field if loc else None,
        )

    def top(self, data: object) -> None:
        """Check the top level (the single key ``all``) and walk the tree from there."""
        if data is None:
            raise self.error("inventory is empty; expected a mapping with the key 'all'")
        if not isinstance(data, Mapping):
            raise self.error(f"inventory must be a mapping with the key 'all', got {_kind(data)}")
        for key in data:
            if key != "all":
                raise self.error(
                    f"unknown top-level key {key!r}{_did_you_mean(key, ['all'])}; "
                    "the top level has the single key 'all'",
                    _at(data, key, str(key)),
                )
        if "all" not in data:
            raise self.error("missing top-level key 'all'")
        self.group("all", data["all"], _at(data, "all", "all"), ())

    def mapping(self, value: object, loc: _Loc) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(
                f"{loc.field.rsplit('.')[-1]!r} must be a mapping, got {_kind(value)}", loc
            )
        return value

    def name(self, name: object, kind: str, loc: _Loc) -> str:
        if not isinstance(name, str):
            raise self.error(f"{kind} name must be a string, got {_kind(name)}", loc)
        if not name or _BAD_NAME.search(name):
            raise self.error(f"invalid {kind} name {name!r}: no whitespace, ',' or '*?[]'", loc)
        return name

    def var_name(self, name: object, loc: _Loc) -> None:
        if not isinstance(name, str):
            raise self.error(f"var names must be strings, got {_kind(name)}", loc)

    def group(self, name: str, body: object, at: _Loc, stack: tuple[str, ...]) -> None:
        """Record one occurrence of a group; ``stack`` is its chain of parents in the file."""
        grp = self.groups.setdefault(name, _Group(order=len(self.groups)))
        if body is None:
            return
        if not isinstance(body, Mapping):
            raise self.error(f"group {name!r} must be a mapping, got {_kind(body)}", at)
        for key, value in body.items():
            loc = _at(body, key, f"{at.field}.{key}")
            if key == "vars":
                for var, val in self.mapping(value, loc).items():
                    vloc = _at(value, var, f"{loc.field}.{var}")
                    self.var_name(var, vloc)
                    if var == "address":
                        raise self.error("'address' is set per host, not as a group var", vloc)
                    grp.vars[var], grp.locs[var] = val, vloc
            elif key == "hosts":
                for host, entry in self.mapping(value, loc).items():
                    self.host(host, entry, name, _at(value, host, f"{loc.field}.{host}"))
            elif key == "children":
                for child, sub in self.mapping(value, loc).items():
                    cloc = _at(value, child, f"{loc.field}.{child}")
                    self.name(child, "group", cloc)
                    path = (*stack, name)
                    if child in path:
                        cycle = " -> ".join([*path[path.index(child) :], child])
                        raise self.error(f"group cycle: {cycle}", cloc)
                    grp.children.setdefault(child, cloc)
                    self.group(child, sub, cloc, path)
            else:
                hint = _did_you_mean(key, _GROUP_KEYS)
                raise self.error(
                    f"unknown key {key!r} in group {name!r}{hint}; "
                    f"a group has only {', '.join(_GROUP_KEYS)}",
                    loc,
                )

    def host(self, raw: object, body: object, group: str, at: _Loc) -> None:
        """Record one host entry: settings and vars merge into the host's earlier entries."""
        name = self.name(raw, "host", at)
        entry = self.hosts.setdefault(name, _HostEntry(first=at))
        entry.groups.append(group)
        if body is None:
            return
        if not isinstance(body, Mapping):
            raise self.error(f"host {name!r} must be a mapping, got {_kind(body)}", at)
        seen: dict[str, _Loc] = {}
        for key, value in body.items():
            loc = _at(body, key, f"{at.field}.{key}")
            self.var_name(key, loc)
            if key == "vars":
                vars_ = self.mapping(value, loc)
                items = [(k, v, _at(vars_, k, f"{loc.field}.{k}")) for k, v in vars_.items()]
            else:
                close = difflib.get_close_matches(key.lower(), SETTINGS, n=1, cutoff=0.8)
                if key not in SETTINGS and close:
                    raise self.error(
                        f"unknown key {key!r} on host {name!r}; did you mean {close[0]!r}? "
                        "(a host var with this name goes under 'vars:')",
                        loc,
                    )
                items = [(key, value, loc)]
            for var, val, vloc in items:
                self.var_name(var, vloc)
                if var in seen:
                    raise self.error(
                        f"{var!r} set twice for host {name!r} ({_where(seen[var])})", vloc
                    )
                seen[var] = vloc
                old = entry.values.get(var, val)
                if var in SETTINGS and var in entry.values and old != val:
                    shown = (REDACTED, REDACTED) if var == "password" else (repr(old), repr(val))
                    raise self.error(
                        f"host {name!r} has conflicting {var!r}: {shown[0]} "
                        f"({_where(entry.locs[var])}) and {shown[1]}",
                        vloc,
                    )
                entry.values[var], entry.locs[var] = val, vloc

    def finish(self) -> tuple[dict[str, Host], dict[str, tuple[str, ...]]]:
        """Check names and cycles, then build every host and each group's members."""
        for name, entry in self.hosts.items():
            if name in self.groups:
                raise self.error(f"{name!r} is both a host and a group", entry.first)
        parents: dict[str, list[str]] = {name: [] for name in self.groups}
        for name, grp in self.groups.items():
            for child in grp.children:
                parents[child].append(name)
        self.check_cycles()
        depth: dict[str, int] = {}
        lineage: dict[str, set[str]] = {}

        def depth_of(name: str) -> int:
            if name not in depth:
                depth[name] = max((depth_of(p) + 1 for p in parents[name]), default=0)
            return depth[name]

        def lineage_of(name: str) -> set[str]:
            if name not in lineage:
                lineage[name] = {name}.union(*(lineage_of(p) for p in parents[name]))
            return lineage[name]

        hosts: dict[str, Host] = {}
        members: dict[str, list[str]] = {name: [] for name in self.groups}
        for name, entry in self.hosts.items():
            in_groups = set().union(*(lineage_of(g) for g in entry.groups))
            ranked = sorted(in_groups, key=lambda g: (depth_of(g), self.groups[g].order))
            hosts[name] = self.build(name, entry, ranked)
            for g in in_groups:
                members[g].append(name)
        for name, host in hosts.items():
            jump = host.vars.get("jump")
            if isinstance(jump, str) and any(p.strip() in hosts for p in jump.split(",")):
                chain = ",".join(_hop_of(hosts[p.strip()]) if p.strip() in hosts else p
                                 for p in jump.split(","))
                hosts[name] = dataclasses.replace(host, vars={**host.vars, "jump": chain})
        return hosts, {name: tuple(m) for name, m in members.items()}

    def check_cycles(self) -> None:
        """Depth-first from ``all``: a child already on the stack closes a cycle."""
        state: dict[str, bool] = {}  # True while on the DFS stack, False once done
        stack: list[str] = []

        def visit(name: str) -> None:
            state[name] = True
            stack.append(name)
            for child, loc in self.groups[name].children.items():
                if state.get(child):
                    cycle = " -> ".join([*stack[stack.index(child) :], child])
                    raise self.error(f"group cycle: {cycle}", loc)
                if child not in state:
                    visit(child)
            stack.pop()
            state[name] = False

        visit("all")

    def build(self, name: str, entry: _HostEntry, ranked: list[str]) -> Host:
        """Merge vars over ``ranked`` groups (lowest first) and the host; pull out settings."""
        values: dict[str, Any] = {}
        locs: dict[str, _Loc] = {}
        for group in ranked:
            values.update(self.groups[group].vars)
            locs.update(self.groups[group].locs)
        values.update(entry.values)
        locs.update(entry.locs)
        if "address" not in values:
            raise self.error(f"host {name!r} has no address", entry.first)
        for key in [k for k in values if k == "password" or k not in SETTINGS]:
            values[key] = resolve_references(values[key], self.base_dir,
                                             f"{self.source}: {name}.{key}")
        s = {
            key: self.check(name, key, values.pop(key), locs[key])
            for key in SETTINGS
            if key in values
        }
        for key in [k for k in values if k.endswith("_port")]:
            values[key] = self.check_port_var(name, key, values[key], locs.get(key))
        return Host(
            name=name,
            address=s["address"],
            port=s.get("port", 22),
            user=s.get("user", "root"),
            identity_file=s.get("identity_file"),
            known_hosts=s.get("known_hosts"),
            become=s.get("become", False),
            password=s.get("password"),
            vars=copy.deepcopy(values),
            groups=tuple(sorted(set(ranked) - {"all"}, key=lambda g: self.groups[g].order)),
            explicit=frozenset(s),
        )

    def check_port_var(self, host: str, key: str, value: Any, loc: _Loc | None) -> Any:
        """A ``*_port`` var (``redis_port``, ``postgres_port``): an integer in 1..65535
        (a string of digits is taken as the number), or None; InventoryError otherwise."""
        if value is None or isinstance(value, Secret):
            return value
        number = value if type(value) is int else (
            int(value) if isinstance(value, str) and value.isascii() and value.isdigit()
            else None)
        if number is None or not 1 <= number <= 65535:
            got = repr(value) if isinstance(value, int | str) and len(repr(value)) <= 40 \
                else _kind(value)
            raise self.error(f"host {host!r}: {key!r} must be a port number in 1..65535, "
                             f"got {got}", loc)
        return number

    def check(self, host: str, key: str, value: Any, loc: _Loc) -> Any:
        """Validate one SSH setting and return it in its final form."""
        if value is None and key in ("identity_file", "known_hosts", "password"):
            return None
        got = _kind(value)
        if key == "port":
            ok, expected = type(value) is int and 1 <= value <= 65535, "an integer in 1..65535"
            got = repr(value) if type(value) is int else got
        elif key == "become":
            ok, expected = isinstance(value, bool), "true or false"
        else:
            ok, expected = isinstance(value, str) and value != "", "a non-empty string"
            ok = ok or (key == "password" and isinstance(value, Secret))
            got = "an empty string" if value == "" else got
        if ok and key in _SETTING_FORMS:
            pattern, expected = _SETTING_FORMS[key]
            ok = bool(pattern.fullmatch(value))
            got = repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value)} chars)"
        if not ok:
            raise self.error(f"host {host!r}: {key!r} must be {expected}, got {got}", loc)
        if key == "password":
            return value if isinstance(value, Secret) else Secret(value)
        if key in ("identity_file", "known_hosts"):
            return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))
        return value
