"""Hooks of a run: phases that run before the rounds (e.g. CG-FedLLM's TGAP pre-training) plug in here.

The engine knows no codec by name. A codec whose model is trained by a phase of the run declares the phase's
name in the class attribute ``trained_by`` (e.g. ``"tgap"``); the run then builds that phase's
:class:`RunHook` from the registry (:func:`register_phase`) when the config enables it. The hook's
:meth:`RunHook.before_rounds` receives the :class:`RunContext`: it may run federated rounds of its own through
``ctx.simulate`` and hand the main rounds another workload, another uplink codec and traffic to count.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # at run time this module imports nothing of the engine (the config check uses it)
    from ..config import RunConfig
    from .workload import Workload

__all__ = [
    "RunContext",
    "RunHook",
    "hooks_for",
    "register_phase",
    "trained_model_phase",
]


@dataclasses.dataclass
class RunContext:
    """What a hook sees of the run, and what it may change before the rounds start.

    Attributes
    ----------
    config, out, resume, progress
        The run's config, folder and flags (read only).
    simulate
        ``simulate(config, workload, progress=...)`` runs every round of ``config`` with in-process clients,
        capturing every raw update, and returns the finished :class:`~.federation.Federation`
        (``rows``, ``ledger``, ``captures``).
    workload
        The workload of the main rounds (a hook may replace it, e.g. with each client's remaining share).
    codec
        The main rounds' uplink codec, ``None`` for ``config.codec.build()``.
    pre_traffic
        Traffic of the phase, counted in the summary's totals (``tgap_traffic``), or ``None``.
    client_config
        What remote clients (Flower) need to rebuild the workload and codec the hook handed the rounds
        (:meth:`RunHook.for_client`); the Flower driver sends it with every train message.
    """

    config: RunConfig
    out: Path
    resume: bool
    progress: bool
    simulate: Callable[..., Any]
    workload: Workload
    codec: Any = None
    pre_traffic: dict[str, Any] | None = None
    client_config: dict[str, str] = dataclasses.field(default_factory=dict)


class RunHook:
    """A phase of the run; override what you need (every method is a no-op here)."""

    def before_rounds(self, ctx: RunContext) -> None:
        """Called once before the first round of this invocation (also on resume)."""

    def after_round(self, fed: Any, row: dict[str, Any]) -> None:
        """Called after every round with the federation and the round's row."""

    def for_client(self, workload: Workload, sent: Mapping[str, Any]) -> tuple[Workload, Any]:
        """On a remote client: the workload and uplink codec (``None``: ``config.codec.build()``) of the
        rounds, rebuilt from ``workload`` and what :meth:`before_rounds` put in ``ctx.client_config``
        (``sent``: the train message's config, which holds those keys)."""
        return workload, None


# phase name -> "module:factory" (imported when a run needs it) or the factory itself
_PHASES: dict[str, str | Callable[[RunConfig], RunHook]] = {
    "tgap": "fedsqueeze.cg_fedllm.tgap_phase:TGAPHook",
}


def register_phase(name: str, factory: str | Callable[[RunConfig], RunHook]) -> None:
    """Register the phase ``name``: ``factory(config) -> RunHook`` or its ``"module:callable"`` path."""
    _PHASES[name] = factory


def trained_model_phase(codec_cls: type) -> str | None:
    """The phase that trains ``codec_cls``'s model (its ``trained_by`` declaration), or ``None``."""
    declared = getattr(codec_cls, "trained_by", None)
    return str(declared) if declared else None


def hooks_for(config: RunConfig) -> list[RunHook]:
    """The hooks ``config`` enables: with ``tgap.enabled``, the phase the codec declares (``tgap`` for the
    CG-FedLLM codecs), built by its registered factory (see :func:`register_phase`)."""
    if not config.tgap.enabled:
        return []
    from ..codecs import codec_class

    phase = trained_model_phase(codec_class(config.codec.name))
    factory = _PHASES.get(phase or "")
    if factory is None:
        raise ConfigError(f"tgap.enabled: codec {config.codec.name!r} has no model that a phase trains")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return [factory(config)]
