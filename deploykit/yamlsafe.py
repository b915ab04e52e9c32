"""Limits on YAML files read from users: size, one value's size, expansion, nesting.

``yaml.safe_load`` refuses arbitrary objects but not a file that costs too much:
a "billion laughs" document (anchors of anchors) loads as a few shared lists, yet
anything that walks or prints it (a ``repr`` in an error message, a deep copy, a
JSON report) expands it exponentially; a 10 MB string ends up in messages and
files; a few thousand ``[`` exhaust Python's recursion. :func:`check_node`
walks a composed node graph once (aliases counted as often as they expand) and
raises :class:`YamlLimitError` naming the line and key path of what is too big.
Callers turn it into their own error (InventoryError, ConfigError)::

    node = loader.get_single_node()
    check_node(node)                 # before anything is constructed
    data = loader.construct_document(node)
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_SCALAR", "YamlLimitError",
           "check_node", "check_size", "load", "short_repr"]

MAX_BYTES = 8 * 1024 * 1024
"""Largest YAML file read (a 10,000-host inventory is well under 2 MiB)."""
MAX_SCALAR = 64 * 1024
"""Longest single value (a key, a string): a certificate fits, a dump does not."""
MAX_NODES = 1_000_000
"""Most values the document expands to, counting each alias as often as it is used."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists."""


class YamlLimitError(ValueError):
    """A YAML document over a limit: ``message``, 1-based ``line`` and dotted ``field``."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.field = field


def check_size(text: str | bytes) -> None:
    """Refuse a file over :data:`MAX_BYTES` before it is parsed."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlLimitError(f"file is {size / 2**20:.1f} MiB; the limit is "
                             f"{MAX_BYTES // 2**20} MiB")


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _key_text(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode) and len(str(node.value)) <= 80:
        return str(node.value)
    return "?"


def check_node(root: yaml.Node | None) -> None:
    """Walk a composed document and raise :class:`YamlLimitError` when a scalar is over
    :data:`MAX_SCALAR`, nesting over :data:`MAX_DEPTH`, or the document expands to over
    :data:`MAX_NODES` values (aliases count each time they are used)."""
    if root is None:
        return
    sizes: dict[int, int] = {}  # id(node) -> expanded size, for nodes fully walked
    active: set[int] = set()  # nodes on the current path (a recursive alias closes a loop)

    def walk(node: yaml.Node, path: str, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in active:
            return 1  # a recursive alias: the caller's own checks name the loop it makes
        if depth > MAX_DEPTH:
            raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels", _line(node),
                                 path or None)
        if isinstance(node, yaml.ScalarNode):
            if len(str(node.value)) > MAX_SCALAR:
                raise YamlLimitError(
                    f"a value of {len(str(node.value)):,} characters; the limit is "
                    f"{MAX_SCALAR:,}", _line(node), path or None)
            sizes[id(node)] = 1
            return 1
        active.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += walk(key, path, depth + 1)
                sub = _key_text(key)
                total += walk(value, f"{path}.{sub}" if path else sub, depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                total += walk(item, f"{path}[{index}]", depth + 1)
                if total > MAX_NODES:
                    break
        active.discard(id(node))
        if total > MAX_NODES:
            raise YamlLimitError(
                f"the document expands to over {MAX_NODES:,} values (anchors and aliases "
                f"nested like a 'billion laughs' attack?)", _line(node), path or None)
        sizes[id(node)] = total
        return total

    walk(root, "", 0)


def load(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """Parse one YAML document within the limits: :class:`YamlLimitError` when it is over
    one (a too-deep document too), ``yaml.YAMLError`` when it is not valid YAML."""
    check_size(text)
    parser = loader(text)
    try:
        node = parser.get_single_node()
        check_node(node)
        return None if node is None else parser.construct_document(node)
    except RecursionError:
        raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        parser.dispose()


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxlevel = 2


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a line: safe on huge strings and on shared nested lists
    (a value from a YAML file, shown in an error message)."""
    return _REPR.repr(value)
