"""The code's shape: no import circle anywhere, and files of one idea (under ~400 lines)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("corpora", "vintage", "backtests", "pipelines", "serving")
MAX_LINES = 400
LONGER = {  # file -> why it may be longer (keep this list short)
    "corpora/worlds/synthetic_market.py": "one idea, the embedded world: `generate` draws every event, document "
                                          "and planted leak from one seeded stream, in an order the recorded "
                                          "numbers depend on",
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, at module level or inside a function (a lazy import is still a
    dependency: it only moves the circle from import time to call time)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def is_package_init(name: str, graph: dict[str, set[str]]) -> bool:
    return any(other.startswith(name + ".") for other in graph)


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_project():
    graph = import_graph()
    # a package's __init__ importing its own submodules (a registry loading its kinds) is not a circle
    # through the package: drop edges from a submodule to its own package's __init__
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not (is_package_init(t, graph) and name.startswith(t + "."))}
    assert graph["vintage.runs"], "the import walk found nothing: it is not reading the files"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_registry_imports_nothing_from_vintage():
    graph = import_graph()
    assert not {t for t in graph["vintage.registry"] if t.startswith("vintage")}, graph["vintage.registry"]


def test_files_of_one_idea_stay_short():
    long = {}
    for package in ("corpora", "vintage", "backtests", "pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            name = str(path.relative_to(ROOT))
            if lines > MAX_LINES and name not in LONGER:
                long[name] = lines
    assert not long, f"files over {MAX_LINES} lines (split them along their ideas, or add a reason to LONGER): {long}"
