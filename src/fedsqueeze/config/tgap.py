"""``[tgap]``: CG-FedLLM's TGAP pre-training phase (:class:`TGAPConfig`), a registered section.

The section registers itself with its cross-section rule (:func:`check_tgap`: TGAP trains the model of the
run's codec, so the codec must be one the phase trains and must not be given a model).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ..errors import ConfigError
from .codec import CodecConfig
from .fields import POSITIVE, Range, setting, validate
from .sections import register_section

__all__ = ["TGAPConfig", "check_tgap", "tgap_codecs"]


@dataclasses.dataclass(frozen=True)
class TGAPConfig:
    """CG-FedLLM's TGAP phase, run by ``fedsqueeze run`` before the main (FAF) rounds when ``enabled``.

    Each client's data is split once (seeded) into a pre-training share ``fraction`` and the rest. TGAP
    collects update snapshots on the pre-training share, trains the autoencoder
    (:func:`fedsqueeze.cg_fedllm.tgap.tgap_pretrain`), saves it in ``OUT/tgap/`` and the main rounds run on
    the rest with ``codec.name`` (``cg_fedllm`` or ``cg_fedllm_q``) using that model, frozen. All TGAP traffic
    is counted (``summary.json`` → ``tgap_traffic``).

    Parameters
    ----------
    enabled
        Run the TGAP phase first (needs ``codec.name`` in ``cg_fedllm``, ``cg_fedllm_q`` and no
        ``codec.options.model_path``).
    fraction
        Share of each client's examples used for pre-training (paper: 0.3); FAF uses the rest.
    collection
        ``"federated"``: ``rounds`` FedAvg rounds with the identity uplink and no error feedback on the
        pre-training share, every client update is a snapshot (uplink and model downloads counted).
        ``"local"``: every client trains alone from the initial model for ``rounds`` local rounds and uploads
        each round's update once (counted).
    rounds
        Snapshot-collection rounds (time steps of the temporal ensemble).
    steps, batch_size, lr
        Adam steps, snapshots per mini-batch and learning rate of the pre-training (paper: lr 2e-4).
    variant
        ``"paper"`` (the paper's autoencoder: no normalisation, ReLU ends, Tanh), ``"sound"`` (per-tensor RMS
        normalisation, linear head) or ``"auto"``: paper for ``cg_fedllm``, sound for ``cg_fedllm_q``.
    depth
        Stride-2 stages of the autoencoder (latent = 1/2**depth of the padded factor stack; paper 6).
    device
        Where the pre-training runs: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``. The codecs run on the CPU.
    seed
        Seed of the pre-training (initialisation and mini-batches). A run mixes it with ``fl.seed``;
        :func:`fedsqueeze.cg_fedllm.tgap.tgap_pretrain` uses it as it is.

    This one class serves both the run's ``[tgap]`` section and
    :func:`~fedsqueeze.cg_fedllm.tgap.tgap_pretrain` (which reads ``steps``, ``batch_size``, ``lr`` and
    ``seed``).
    """

    enabled: bool = False
    fraction: float = setting(0.3, range=Range(0, 1, low_closed=False))
    collection: str = setting("federated", choices=("federated", "local"))
    rounds: int = setting(5, range=Range(1))
    steps: int = setting(400, range=Range(1))
    batch_size: int = setting(8, range=Range(1))
    lr: float = setting(2e-4, range=POSITIVE)
    variant: str = setting("auto", choices=("auto", "paper", "sound"))
    depth: int = setting(6, range=Range(1, 8, high_closed=True, text="1..8"))
    device: str = setting("cpu", allowed="cpu, cuda, cuda:N")
    seed: int = setting(0, range=Range(0, 2**63, text="[0, 2**63)"))

    def __post_init__(self) -> None:
        validate(self, "tgap")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"tgap.device must be cpu, cuda or cuda:N, got {self.device!r}")


def tgap_codecs() -> tuple[str, ...]:
    """The registered codecs whose model the TGAP phase trains (they declare it: ``trained_by = "tgap"``)."""
    from ..codecs import available, codec_class

    return tuple(n for n in available() if getattr(codec_class(n), "trained_by", None) == "tgap")


class _WithTGAP(Protocol):
    """The part of a ``RunConfig`` the check reads (a protocol: ``run.py`` imports this module)."""

    @property
    def codec(self) -> CodecConfig: ...

    @property
    def tgap(self) -> TGAPConfig: ...


def check_tgap(config: _WithTGAP) -> None:
    """With ``tgap.enabled``: the codec is one TGAP trains, and no model is given to it."""
    if not config.tgap.enabled:
        return
    if config.codec.name not in tgap_codecs():
        raise ConfigError(
            f"tgap.enabled trains an autoencoder for {' or '.join(tgap_codecs())}; set codec.name to "
            f"one of them (got {config.codec.name!r}) or tgap.enabled = false"
        )
    given = [k for k in ("model_path", "model_fingerprint") if config.codec.options.get(k) is not None]
    if given:
        raise ConfigError(
            f"tgap.enabled trains the model itself; remove codec.options.{given[0]} (or set "
            "tgap.enabled = false to use that model)"
        )


register_section("tgap", TGAPConfig, check=check_tgap)
