"""`src/fedsqueeze` has no import cycle, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import fedsqueeze

ROOT = Path(fedsqueeze.__file__).parent
PKG = "fedsqueeze"

# Cycles that exist today outside the federation core, each a sorted tuple of its modules. The test tolerates
# exactly these (and fails when one disappears, so the list shrinks with the code); any other cycle fails.
KNOWN: set[tuple[str, ...]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (functions included)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # ``if TYPE_CHECKING:`` blocks never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` names the submodule when it is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``import fedsqueeze.fl.loop.x`` -> the nearest module
                t = t.rpartition(".")[0]
            if t.startswith(PKG) and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_relative_and_function_level_imports():
    g = graph()
    assert "fedsqueeze.fl.federation" in g["fedsqueeze.fl.loop"]  # from .federation import ...
    assert "fedsqueeze.codecs" in g["fedsqueeze.fl.hooks"]  # imported inside a function
    assert "fedsqueeze.fl.federation" in g["fedsqueeze.learned.tgap_phase"]
    assert "fedsqueeze.config" not in g["fedsqueeze.fl.hooks"]  # under ``if TYPE_CHECKING:`` only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = {tuple(c) for c in cycles(graph())}
    new = found - KNOWN
    assert not new, "import cycle(s): " + "; ".join(" <-> ".join(c) for c in sorted(new))
    assert not KNOWN - found, f"these known cycles are gone, drop them from KNOWN: {sorted(KNOWN - found)}"


def test_the_engine_does_not_import_learned():
    g = graph()
    engine = [m for m in g if m.startswith(("fedsqueeze.fl.", "fedsqueeze.flower."))]
    assert not [(m, t) for m in engine for t in g[m] if t.startswith("fedsqueeze.learned")]
