"""The import graph of `src/fedsqueeze`: the layers are in order and there is no cycle.

Every import counts: at module level, inside functions and under ``if TYPE_CHECKING:`` (a type-only import
is still a dependency of the code that names the type). The layers, lowest first:

1. ``spec``, ``wire``, ``codecs`` (with ``errors``, ``seeding`` and the other top-level helpers): the codec
   core, usable without the engine, the models or Flower;
2. ``models``, ``data``: real models and datasets, which do not know the engine (``fl``);
3. ``cg_fedllm``: the learned codecs, their autoencoder and TGAP (above ``codecs`` and ``models``; only its
   run phase, ``cg_fedllm.tgap_phase``, imports the engine), and ``fl``, the engine;
4. ``flower``, ``study``, ``bench``, ``analysis``, ``cli``: drivers and tools on top.

The codec registry loads the CG-FedLLM codecs by module path (``codecs/registry.py: PLUGINS``), a string the
graph does not follow: ``codecs`` does not depend on ``cg_fedllm`` at import time either.
"""

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
    """The package's modules that ``name`` imports anywhere in its file (functions and TYPE_CHECKING too)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):  # every node: functions and ``if TYPE_CHECKING:`` blocks included
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
    assert "fedsqueeze.fl.federation" in g["fedsqueeze.cg_fedllm.tgap_phase"]
    assert "fedsqueeze.config" in g["fedsqueeze.fl.hooks"]  # under ``if TYPE_CHECKING:``
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = {tuple(c) for c in cycles(graph())}
    new = found - KNOWN
    assert not new, "import cycle(s): " + "; ".join(" <-> ".join(c) for c in sorted(new))
    assert not KNOWN - found, f"these known cycles are gone, drop them from KNOWN: {sorted(KNOWN - found)}"


LOW = ("spec", "wire", "codecs")
ABOVE_LOW = ("fl", "models", "data", "cg_fedllm", "flower", "study", "bench", "analysis", "cli")
# The CG-FedLLM module that may import the engine: the run phase, which drives Federation rounds.
RUN_PHASE = "fedsqueeze.cg_fedllm.tgap_phase"
# The run config and the aggregation rules sit between the codecs and the engine: the config validates
# names against the model and dataset registries (models.registry, data.sources, data.files, ...), which
# import no config; the model and data code that trains and reads imports the config. No cycle (the test
# above) keeps the two directions apart module by module.
MIDDLE = ("config", "aggregation")
ENGINE_AND_ABOVE = ("fl", "cg_fedllm", "flower", "study", "bench", "analysis", "cli")


def layer(module: str) -> str:
    """The top-level part of a module name: ``fedsqueeze.codecs.flm.packets`` -> ``codecs``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def edges(g: dict[str, set[str]], src: tuple[str, ...], dst: tuple[str, ...]) -> set[tuple[str, str]]:
    """The imports from a module in one of the ``src`` layers to one in the ``dst`` layers."""
    return {(m, t) for m, targets in g.items() if layer(m) in src for t in targets if layer(t) in dst}


def test_the_layer_helpers():
    assert layer("fedsqueeze.codecs.flm.packets") == "codecs" and layer("fedsqueeze.spec") == "spec"
    assert edges({"fedsqueeze.wire.frame": {"fedsqueeze.fl.loop", "fedsqueeze.spec"}}, LOW, ("fl",)) == {
        ("fedsqueeze.wire.frame", "fedsqueeze.fl.loop")
    }
    assert set(ABOVE_LOW) | set(MIDDLE) >= {layer(m) for m in graph()} - set(LOW) - {
        "",
        "errors",
        "configs",
        "offline",
        "out_paths",
        "safetensors_errors",
        "seeding",
        "strict_json",
        "__main__",
        "_docstring",
        "_extras",
        "_host",
        "_plotstyle",
    }, "a new top-level package: place it in the layers of this test"


def test_spec_wire_and_codecs_import_nothing_above_them():
    assert not edges(graph(), LOW, ABOVE_LOW + MIDDLE)


def test_the_config_and_the_aggregation_rules_import_nothing_of_the_engine_or_above():
    assert not edges(graph(), MIDDLE, ENGINE_AND_ABOVE)


def test_models_data_and_cg_fedllm_do_not_import_the_engine():
    g = graph()
    found = {(m, t) for m, t in edges(g, ("models", "data", "cg_fedllm"), ("fl",)) if m != RUN_PHASE}
    assert not found, f"imports of fl below it: {sorted(found)}"


def test_the_engine_does_not_import_cg_fedllm():
    g = graph()
    assert not edges(g, ("fl", "flower"), ("cg_fedllm",))
