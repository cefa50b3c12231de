"""Optional dependencies: which ``fedsqueeze[...]`` extra provides a module, and a one-line error without it.

The core (:mod:`fedsqueeze.spec`, :mod:`fedsqueeze.wire`, :mod:`fedsqueeze.codecs`) needs only torch, numpy,
scipy, constriction and safetensors. Everything else is imported lazily, behind :func:`require`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingExtraError, UsageError

__all__ = ["EXTRAS", "check", "require"]

# extra -> the top-level modules it provides (kept in step with [project.optional-dependencies]).
EXTRAS: dict[str, tuple[str, ...]] = {
    "llm": ("transformers", "peft", "gguf", "accelerate"),
    "data": ("datasets",),
    "flower": ("flwr", "ray"),
    "plots": ("matplotlib",),
    "cli": ("rich",),
}


def _missing(top: str, extra: str, purpose: str) -> MissingExtraError:
    if extra not in EXTRAS:
        raise UsageError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return MissingExtraError(
        f"fedsqueeze[{extra}] is needed for {purpose} ({top} is not installed): "
        f"pip install 'fedsqueeze[{extra}]'"
    )


def check(module: str, extra: str, purpose: str) -> None:
    """Like :func:`require` but without importing: only that the top-level package of ``module`` is there.

    Cheap; meant for checks up front, before anything slow starts (a model load, a training run).
    """
    top = module.split(".")[0]
    error = _missing(top, extra, purpose)  # validates ``extra`` either way
    if importlib.util.find_spec(top) is None:
        raise error


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`~fedsqueeze.errors.MissingExtraError` naming ``extra``.

    Parameters
    ----------
    module
        Module to import (``"transformers"``, ``"flwr.app"``, ...).
    extra
        The ``fedsqueeze[...]`` extra that installs it (a key of :data:`EXTRAS`).
    purpose
        What needs it, completing "fedsqueeze[llm] is needed for ..." (e.g. ``"Hugging Face models"``).

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    MissingExtraError
        ``module`` (or the package it belongs to) is not installed. Other import failures propagate unchanged.
    """
    top = module.split(".")[0]
    error = _missing(top, extra, purpose)  # validates ``extra`` before anything is imported
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the package is there but one of *its* dependencies is not: not ours to rename
        raise error from None
