"""Every error `src/fedsqueeze` raises on purpose derives from `FedsqueezeError` (read from the source).

The check is static, so it needs none of the optional extras and imports nothing: names are resolved through
each module's own imports and class definitions, following re-exports across the package.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import fedsqueeze

ROOT = Path(fedsqueeze.__file__).parent
PKG = "fedsqueeze"
BASE = "fedsqueeze.errors.FedsqueezeError"

# Raises of a class outside the tree that are allowed, each for the reason given. The test fails when one is
# no longer used, so the list only shrinks.
ALLOWED_CLASSES = {
    "builtins.SystemExit": "the exit status of a `python -m` entry point (checked: only under `__main__`)",
    "argparse.ArgumentTypeError": "argparse's own error from a `type=` converter",
    "builtins.AttributeError": "the module `__getattr__` protocol (fedsqueeze.flower's names loaded on use)",
}
# Raises of a local value the static walk cannot type: (module, name) -> what it holds.
ALLOWED_LOCALS = {
    ("fedsqueeze._extras", "error"): "a MissingExtraError built up front by _missing()",
    ("fedsqueeze.codecs.wf_ecq._tcq", "error"): "the caller's PayloadError class, passed in",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Package:
    """The modules' trees, their top-level names and the package's class and function definitions."""

    def __init__(self) -> None:
        self.trees: dict[str, ast.Module] = {}
        self.env: dict[str, dict[str, str]] = {}  # module -> local name -> qualified name
        self.classes: dict[str, tuple[str, list[ast.expr]]] = {}  # qualname -> (module, bases)
        self.functions: dict[str, tuple[str, ast.expr | None]] = {}  # qualname -> (module, return annotation)
        paths = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
        for mod, path in paths.items():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            self.trees[mod] = tree
            pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
            env: dict[str, str] = {}
            for node in ast.walk(tree):  # imports inside functions count too
                if isinstance(node, ast.Import):
                    for a in node.names:
                        env[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                elif isinstance(node, ast.ImportFrom):
                    anchor = pkg[: len(pkg) - (node.level - 1)] if node.level else []
                    src = ".".join(anchor + ([node.module] if node.module else []))
                    for a in node.names:
                        env[a.asname or a.name] = f"{src}.{a.name}"
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    env[node.name] = f"{mod}.{node.name}"
                    self.classes[f"{mod}.{node.name}"] = (mod, node.bases)
                elif isinstance(node, ast.FunctionDef):
                    env[node.name] = f"{mod}.{node.name}"
                    self.functions[f"{mod}.{node.name}"] = (mod, node.returns)
            self.env[mod] = env

    def resolve(self, mod: str, expr: ast.expr) -> str | None:
        """The qualified name ``expr`` stands for in ``mod``, or ``None`` (a local value)."""
        dotted = ast.unparse(expr) if isinstance(expr, ast.Name | ast.Attribute) else None
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head in self.env[mod]:
            q = self.env[mod][head] + (f".{rest}" if rest else "")
        elif hasattr(builtins, head) and not rest:
            return f"builtins.{head}"
        else:
            return None
        return self.canonical(q)

    def canonical(self, q: str, depth: int = 0) -> str:
        """Follow re-exports (``from .errors import ConfigError`` in ``__init__``) to the defining module."""
        if q in self.classes or q in self.functions or depth > 20:
            return q
        mod, _, name = q.rpartition(".")
        if mod in self.env and name in self.env[mod] and self.env[mod][name] != q:
            return self.canonical(self.env[mod][name], depth + 1)
        return q

    def is_ours(self, q: str | None) -> bool:
        if q == BASE:
            return True
        if q not in self.classes:
            return False
        mod, bases = self.classes[q]
        return any(self.is_ours(self.resolve(mod, b)) for b in bases)

    def is_exception(self, q: str | None) -> bool:
        if q is None:
            return False
        if q.startswith("builtins."):
            obj = getattr(builtins, q.removeprefix("builtins."), None)
            return isinstance(obj, type) and issubclass(obj, BaseException)
        if q not in self.classes:
            return False
        mod, bases = self.classes[q]
        return any(self.is_exception(self.resolve(mod, b)) for b in bases)


@pytest.fixture(scope="module")
def package() -> Package:
    return Package()


def _scopes(tree: ast.Module):
    """Each raise, the names ``except ... as`` binds in its function, and whether it is under a main guard."""
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise):
            continue
        scope: ast.AST = node
        main_guard = False
        while id(scope) in parents:
            scope = parents[id(scope)]
            if isinstance(scope, ast.If) and "__main__" in ast.unparse(scope.test):
                main_guard = True
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                break
        handled = {h.name for h in ast.walk(scope) if isinstance(h, ast.ExceptHandler) and h.name}
        yield node, handled, main_guard


def test_every_raise_is_a_fedsqueeze_error(package: Package) -> None:
    bad: list[str] = []
    used_classes: set[str] = set()
    used_locals: set[tuple[str, str]] = set()
    for mod, tree in package.trees.items():
        for node, handled, main_guard in _scopes(tree):
            if node.exc is None:
                continue  # a bare re-raise
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            where = f"{mod}:{node.lineno} raise {ast.unparse(target)}"
            if isinstance(target, ast.Name) and target.id in handled and not isinstance(node.exc, ast.Call):
                continue  # ``except X as exc: ... raise exc``: a re-raise
            q = package.resolve(mod, target)
            if q in package.functions:  # a factory: its return annotation says what it builds
                fmod, returns = package.functions[q]
                q = package.resolve(fmod, returns) if returns is not None else None
                if not package.is_ours(q):
                    bad.append(f"{where}: the factory returns {q or 'an unannotated value'}")
                continue
            if q is None:
                key = (mod, ast.unparse(target))
                if key in ALLOWED_LOCALS:
                    used_locals.add(key)
                else:
                    bad.append(f"{where}: a local value the test cannot type (add it to ALLOWED_LOCALS?)")
                continue
            if package.is_ours(q):
                continue
            if q in ALLOWED_CLASSES:
                used_classes.add(q)
                if q == "builtins.SystemExit" and not main_guard:
                    bad.append(f"{where}: SystemExit outside `if __name__ == '__main__'`")
                continue
            bad.append(f"{where}: {q} does not derive from FedsqueezeError")
    assert not bad, "\n".join(bad)
    assert used_classes == set(ALLOWED_CLASSES), f"unused: {set(ALLOWED_CLASSES) - used_classes}"
    assert used_locals == set(ALLOWED_LOCALS), f"unused: {set(ALLOWED_LOCALS) - used_locals}"


def test_every_exception_class_derives_from_fedsqueeze_error(package: Package) -> None:
    exceptions = [q for q in package.classes if package.is_exception(q)]
    assert "fedsqueeze.codecs.flm._packets.BudgetTooSmallError" in exceptions  # the walk finds nested modules
    assert len(exceptions) >= 8
    bad = [q for q in exceptions if not package.is_ours(q)]
    assert not bad, bad


def test_the_walk_catches_a_stray_value_error() -> None:
    # The checker itself must be able to fail: a module raising ValueError is flagged, ConfigError is not.
    package = Package()
    tree = ast.parse(
        "from .errors import ConfigError\n"
        "def f(x):\n    if x:\n        raise ValueError('no')\n    raise ConfigError('fine')\n"
    )
    package.trees = {"fedsqueeze._probe": tree}
    package.env["fedsqueeze._probe"] = {"ConfigError": "fedsqueeze.errors.ConfigError"}
    with pytest.raises(AssertionError, match=r"_probe:4 raise ValueError: builtins.ValueError does not"):
        test_every_raise_is_a_fedsqueeze_error(package)


def test_raised_errors_keep_their_builtin_bases() -> None:
    # Callers that catch ValueError (or ImportError, RuntimeError) keep working.
    from fedsqueeze.codecs.flm._packets import BudgetTooSmallError

    values = (fedsqueeze.ConfigError, fedsqueeze.PayloadError, fedsqueeze.UpdateError, fedsqueeze.UsageError)
    for cls in values:
        assert issubclass(cls, ValueError) and issubclass(cls, fedsqueeze.FedsqueezeError)
    assert issubclass(BudgetTooSmallError, fedsqueeze.ConfigError)
    assert issubclass(fedsqueeze.MissingExtraError, ImportError)
    assert issubclass(fedsqueeze.MeasurementError, RuntimeError)
