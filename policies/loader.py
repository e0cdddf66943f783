"""Load policies from YAML with errors that name the field *and* the line.

Why the extra work: policies are edited by hand and pushed through an admin API; "rules.3.then:
Extra inputs are not permitted" is only half an answer when the file has 200 lines. We compose
the YAML into a node tree (which keeps ``start_mark`` for every node), build the Python data
from that same tree, validate with pydantic, and walk each error's ``loc`` back down the node
tree to find the line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from common.yamldoc import SafeLoader, duplicate_keys, key_path
from policies.schema import Policy, reference_errors


@dataclass(frozen=True, slots=True)
class PolicyErrorItem:
    path: str  # dotted field path, e.g. "rules[2].then.tier"
    message: str
    line: int | None = None  # 1-based YAML line
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path or '<root>'}: {self.message}"


class PolicyValidationError(ValueError):
    """A policy that cannot be used; ``errors`` lists every problem found, each with its line."""

    def __init__(self, errors: list[PolicyErrorItem], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "invalid policy:\n" + "\n".join(f"  {e}" for e in errors))

    def as_dicts(self) -> list[dict[str, Any]]:
        """JSON-friendly form for the admin API's 422 body."""
        return [{"path": e.path, "line": e.line, "column": e.column, "message": e.message} for e in self.errors]


def format_loc(loc: Iterable[str | int]) -> str:
    return key_path(loc)


def _locate(root: yaml.Node | None, loc: tuple[str | int, ...]) -> tuple[yaml.Node | None, list[int]]:
    """Deepest node reachable along ``loc``, and the indexes of the ``loc`` parts that matched.

    Loc parts that do not name a key or index (pydantic adds union member tags such as
    ``'cheapest'`` for discriminated unions, or ``'list[str]'``) are skipped, so the walk still
    ends on the right node. When the last step was a mapping lookup the *key* node is returned:
    its line is the one a human looks for (the ``tier:`` line, not the line after a ``then:``).
    """
    node = root
    found: yaml.Node | None = root
    matched: list[int] = []
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    node, found = v, k
                    matched.append(i)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = found = node.value[part]
            matched.append(i)
    return found, matched


_UNION_TAGS = frozenset({"fixed", "weighted", "cheapest", "lowest_latency", "least_busy", "classifier", "bandit"})


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part.startswith("function-"))


def _item(root: yaml.Node | None, loc: tuple[str | int, ...], message: str) -> PolicyErrorItem:
    """An error at ``loc``: the path shows what matched in the YAML plus the unmatched tail (e.g. the
    name of a missing field), without pydantic's union tags."""
    node, matched = _locate(root, loc)
    last = matched[-1] if matched else -1
    shown = [p for i, p in enumerate(loc) if i in matched or (i > last and not _is_union_tag(p))]
    line = node.start_mark.line + 1 if node is not None else None
    col = node.start_mark.column + 1 if node is not None else None
    return PolicyErrorItem(path=format_loc(shown), message=message, line=line, column=col)


# How many values a policy may expand to once YAML aliases are followed (or the text's length, when that
# is larger: a document without aliases never has more values than characters). Aliases let a few
# hundred bytes name millions of values ("billion laughs"), and validation walks every one of them on
# the event loop of a gateway that is serving traffic.
MAX_VALUES = 100_000


def _expands_beyond(root: yaml.Node | None, limit: int) -> bool:
    """Whether walking ``root`` with its aliases followed visits more than ``limit`` nodes (stops there)."""
    seen = 0
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += (k, v)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return False


def _refuse(message: str, source: str | None, line: int | None = None, column: int | None = None) -> NoReturn:
    raise PolicyValidationError([PolicyErrorItem(path="", message=message, line=line, column=column)], source)


def _compose(text: str, source: str | None) -> tuple[Any, yaml.Node | None]:
    nul = text.find("\x00")
    if nul >= 0:  # YAML ends a document at a NUL and keeps what came before, which a database cannot store
        before = text[:nul]
        _refuse("a NUL character (U+0000) is not allowed", source, before.count("\n") + 1,
                nul - (before.rfind("\n") + 1) + 1)
    limit = max(MAX_VALUES, len(text))
    try:
        loader = SafeLoader(text)  # libyaml's: a policy is parsed on the admin API's request path and at reload
        try:
            node = loader.get_single_node()
            if _expands_beyond(node, limit):
                _refuse(f"the policy expands to more than {limit} values (YAML aliases)", source)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:  # PyYAML composes nested collections recursively
        _refuse("collections are nested too deeply", source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise PolicyValidationError(
            [
                PolicyErrorItem(
                    path="",
                    message=f"YAML syntax: {exc.problem or exc.context}",
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ],
            source,
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyValidationError([PolicyErrorItem(path="", message=f"YAML: {exc}")], source) from None
    return data, node


def parse_policy(
    text: str,
    *,
    default_name: str | None = None,
    require_name: str | None = None,
    source: str | None = None,
) -> Policy:
    """YAML text → validated Policy, or PolicyValidationError listing every problem with its line.

    ``default_name`` fills ``name`` when the YAML omits it (the file loader knows the file stem);
    ``require_name`` also fills it, and additionally rejects a YAML whose name differs (the registry
    stores a policy under a name, and the two must never disagree).
    """
    data, root = _compose(text, source)
    dups = duplicate_keys(root)  # YAML would keep the last of them silently
    if dups:
        items = [PolicyErrorItem(path=d.path, message=f"duplicate key {d.key!r} (first on line {d.first_line})",
                                 line=d.line, column=d.column) for d in dups]
        raise PolicyValidationError(items, source)
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        raise PolicyValidationError(
            [PolicyErrorItem(path="", message="a policy must be a YAML mapping", line=line)], source
        )
    fill = require_name or default_name
    if fill is not None and "name" not in data:
        data["name"] = fill
    if require_name is not None and data["name"] != require_name:
        msg = f"name {data['name']!r} does not match the policy name {require_name!r}"
        raise PolicyValidationError([_item(root, ("name",), msg)], source)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        items = [_item(root, tuple(e["loc"]), _clean(e["msg"])) for e in exc.errors(include_url=False)]
        raise PolicyValidationError(items, source) from None
    refs = reference_errors(policy)
    if refs:
        raise PolicyValidationError([_item(root, loc, msg) for loc, msg in refs], source)
    return policy


def _clean(msg: str) -> str:
    """pydantic prefixes our own ValueError messages with "Value error, "; the user needs only ours."""
    return msg.removeprefix("Value error, ")


def load_policy_file(path: str | Path) -> Policy:
    """One policy file; its name defaults to the file stem (``auto.yaml`` → ``auto``)."""
    p = Path(path)
    return parse_policy(p.read_text(encoding="utf-8"), default_name=p.stem, source=str(p))


def load_policy_dir(path: str | Path) -> dict[str, Policy]:
    """Every ``*.yaml``/``*.yml`` in a folder, by policy name; all errors of all files reported together."""
    out: dict[str, Policy] = {}
    problems: list[str] = []
    for p in sorted(Path(path).glob("*.y*ml")):
        try:
            pol = load_policy_file(p)
        except PolicyValidationError as exc:
            problems.append(str(exc))
            continue
        if pol.name in out:
            problems.append(f"{p}: duplicate policy name {pol.name!r}")
        out[pol.name] = pol
    if problems:
        raise ValueError("\n".join(problems))
    return out


def examples_dir() -> Path:
    """The example policies shipped with the package."""
    return Path(__file__).resolve().parent / "examples"
