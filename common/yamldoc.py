"""YAML reading shared by the config file (gateway/config.py) and policies (policies/loader.py).

`SafeLoader` is libyaml's loader where PyYAML was built with it: the same nodes, marks and errors as
the pure-Python one, composed about three times faster. YAML lets a mapping repeat a key and keeps
the last value, so a second ``selector:`` or ``database_url:`` would silently replace the first:
`duplicate_keys` finds every repeat in a composed node tree, with its line, so callers refuse it.
Checking the node tree (not a custom constructor) keeps libyaml's speed and lets a caller report
every repeat at once, each with the path of keys that leads to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml

__all__ = ["DuplicateKey", "SafeLoader", "duplicate_keys", "key_path"]

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# `<<: *anchor` merges another mapping; a key written next to it overrides the merged one on purpose.
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A mapping key written a second time (or more) in the same mapping."""

    loc: tuple[str | int, ...]  # keys and list indexes from the document root; the repeated key last
    line: int  # 1-based line of the repeat
    column: int  # 1-based
    first_line: int  # 1-based line where the key first appears in that mapping

    @property
    def key(self) -> str:
        return str(self.loc[-1])

    @property
    def path(self) -> str:
        return key_path(self.loc)


def key_path(loc: Iterable[str | int]) -> str:
    """``("rules", 2, "then")`` → ``rules[2].then``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def duplicate_keys(root: yaml.Node | None) -> list[DuplicateKey]:
    """Every repeated scalar key in the tree under ``root``, in document order.

    Each node is visited once, so an alias (a node shared by several places) costs nothing more and a
    repeat inside an anchored mapping is reported once, at the first path that reaches it. Iterative:
    deep nesting cannot exhaust Python's stack here.
    """
    out: list[DuplicateKey] = []
    seen: set[int] = set()
    # depth first in document order (children pushed last-first), so a node that aliases reach too is
    # walked, and named, where its anchor defines it; scalars hold no keys and are never pushed
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())] if root is not None else []
    push, collection = stack.append, yaml.CollectionNode
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG:
                    # (tag, text): `1` and `"1"` are different keys; `a` and `"a"` are the same one
                    ident = (k.tag, k.value)
                    if ident in first:
                        out.append(DuplicateKey((*loc, k.value), k.start_mark.line + 1, k.start_mark.column + 1,
                                                first[ident]))
                    else:
                        first[ident] = k.start_mark.line + 1
            for k, v in reversed(node.value):
                if isinstance(v, collection):
                    named = isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG
                    push((v, (*loc, k.value) if named else loc))
        elif isinstance(node, yaml.SequenceNode):
            for i in range(len(node.value) - 1, -1, -1):
                if isinstance(node.value[i], collection):
                    push((node.value[i], (*loc, i)))
    out.sort(key=lambda d: (d.line, d.column))
    return out

