"""Flower adapter: fedsqueeze's own Flower job, and compression as a drop-in for any Flower app.

* ``fedsqueeze flower ...`` runs the same federated job as ``fedsqueeze run`` on Flower (simulation or
  deployment): the numerics are those of :mod:`fedsqueeze.fl` (:func:`~fedsqueeze.fl.client.client_step` on
  the clients, :class:`~fedsqueeze.fl.federation.Federation` on the server). See ``docs/flower.md``.
* :func:`compress_mod` (a client mod) and :class:`Compressed` (a strategy wrapper) compress the ``train``
  replies of any Flower app: ``ClientApp(mods=[compress_mod()])`` and ``Compressed(FedAvg(...),
  codec="flm_topk")``. With ``Compressed(..., downlink="wf_ecq")`` the train messages go out compressed
  too, and :func:`downlink_mod` (``ClientApp(mods=[downlink_mod(), compress_mod()])``) rebuilds them. See
  ``docs/flower-dropin.md``.

This package is the only place that imports ``flwr`` (``flwr[simulation]==1.41.0``), and only inside the
modules that need it; importing ``fedsqueeze.flower`` itself does not (``compress_mod`` and ``Compressed``
and ``downlink_mod`` are loaded on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .env import FLOWER_ENV, OFFLINE_ENV, apply_offline_env
from .settings import FlowerSettings

if TYPE_CHECKING:
    from .mods import compress_mod, downlink_mod
    from .strategy import Compressed

__all__ = [
    "FLOWER_ENV",
    "OFFLINE_ENV",
    "Compressed",
    "FlowerSettings",
    "apply_offline_env",
    "compress_mod",
    "downlink_mod",
]

_LAZY = {"compress_mod": "mods", "downlink_mod": "mods", "Compressed": "strategy"}


def __getattr__(name: str) -> Any:
    """``compress_mod``, ``downlink_mod`` and ``Compressed``, imported with Flower on first access."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._extras import require

    require("flwr", "flower", f"fedsqueeze.flower.{name}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
