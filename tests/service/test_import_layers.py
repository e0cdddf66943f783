"""The package layering DESIGN.md describes, checked on the source: no top-level package imports
another in a circle, the shared value types import nothing of the project, and `gateway/` holds no
routing, budget or feedback logic (it reaches those through `service/`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "common",
    "gateway",
    "service",
    "router",
    "policies",
    "backends",
    "requestlog",
    "state",
    "local_model",
    "migrations",
)

# Modules that decide, price, limit or learn: the request service uses them, the HTTP layer never does.
LOGIC = (
    "router.decide",
    "router.calibrate",
    "router.escalation",
    "router.retry",
    "router.selectors",
    "router.rules",
    "router.budget",
    "router.ratelimit",
    "router.bandits",
    "router.plugins",
    "router.offline",
    "requestlog.spend",
    "state.budgets",
    "state.budget_reconcile",
    "state.bandits",
    "state.ratelimits",
    "state.breakers",
    "requestlog.tables.feedback",  # feedback is stored by service.feedback
)
# The app factory builds the stores and plugins it wires together; nothing else in gateway/ may.
WIRING = {"gateway/app.py", "gateway/services.py"}
# The command line runs offline tools (training, evaluation); it is not part of the serving path.
OFFLINE_CLI = {"gateway/cli.py"}


def _imports(path: Path) -> Iterator[str]:
    """Every absolute module an import statement in ``path`` names, at any depth (lazy imports too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _sources() -> Iterator[tuple[str, str, set[str]]]:
    """(package, path relative to the repository, project modules it imports) per source file."""
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield pkg, rel, {m for m in _imports(path) if m.split(".")[0] in PACKAGES}


def _edges() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files that import it."""
    edges: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for pkg, rel, mods in _sources():
        for m in mods:
            other = m.split(".")[0]
            if other != pkg:
                edges[pkg].setdefault(other, []).append(rel)
    return edges


def _cycle(edges: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of the package graph (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(p: str) -> list[str] | None:
        state[p] = 1
        stack.append(p)
        for q in sorted(edges[p]):
            if state.get(q) == 1:
                return stack[stack.index(q) :] + [q]
            if q not in state and (found := visit(q)):
                return found
        stack.pop()
        state[p] = 2
        return None

    for p in PACKAGES:
        if p not in state and (found := visit(p)):
            return found
    return None


def test_no_top_level_package_imports_another_in_a_circle() -> None:
    edges = _edges()
    cycle = _cycle(edges)
    where = (
        [f"{a} -> {b}: {sorted(set(edges[a][b]))}" for a, b in zip(cycle, cycle[1:], strict=False)]
        if cycle
        else []
    )
    assert cycle is None, "import cycle " + " -> ".join(cycle or []) + "\n" + "\n".join(where)


def test_the_shared_value_types_import_nothing_of_the_project() -> None:
    assert _edges()["common"] == {}


def test_gateway_holds_no_routing_budget_or_feedback_logic() -> None:
    wrong = []
    for pkg, rel, mods in _sources():
        if pkg != "gateway":
            continue
        for m in sorted(mods):
            if rel in OFFLINE_CLI and m.startswith("router.offline"):
                continue
            if m.startswith(LOGIC) and rel not in WIRING:
                wrong.append(f"{rel} imports {m}")
            elif m.split(".")[0] in ("router", "state") and rel not in WIRING:
                wrong.append(f"{rel} imports {m} (only the app factory builds router/state parts)")
    assert not wrong, "\n".join(wrong)


def test_serving_path_does_not_import_offline_tooling() -> None:
    """The live gateway loads artifacts through router.artifacts; router.offline (training, writing
    artifacts, data readers) is reached only from the command line."""
    wrong = [
        f"{rel} imports {m}"
        for pkg, rel, mods in _sources()
        if pkg in ("gateway", "service")
        for m in sorted(mods)
        if m.startswith("router.offline") and rel not in OFFLINE_CLI
    ]
    wrong += [
        f"{rel} imports {m}"
        for pkg, rel, mods in _sources()
        if pkg == "router" and not rel.startswith("router/offline/")
        for m in sorted(mods)
        if m.startswith("router.offline")
    ]
    assert not wrong, "\n".join(wrong)


def test_every_top_level_package_is_installed_and_copied_into_the_image() -> None:
    import re
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    for pkg in PACKAGES:
        assert f"{pkg}*" in include, f"{pkg} is missing from pyproject's packages"
        assert pkg in copied, f"the Dockerfile does not copy {pkg}"
