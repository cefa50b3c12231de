"""What the two CG-FedLLM codecs share: their capability flags and the decoder's use of ``models``."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import ClassVar

import torch

from ..codecs.base import Codec, ModelSource, Reference
from ..spec import UpdateSpec

__all__ = ["TrainedModelCodec"]


@dataclasses.dataclass(frozen=True)
class TrainedModelCodec(Codec):
    """Base of the codecs that code with a TGAP-trained autoencoder (``cg_fedllm``, ``cg_fedllm_q``).

    A subclass implements :meth:`encode_flat` and :meth:`decode_flat`, whose ``models`` says where the
    decoder finds the autoencoder named by the fingerprint in the body (see :func:`fedsqueeze.decode`).
    """

    uses_trained_model: ClassVar[bool] = True
    trained_by: ClassVar[str | None] = "tgap"

    @classmethod
    def decode_body(
        cls,
        body: bytes,
        spec: UpdateSpec,
        *,
        seed: int,
        reference: Reference | None = None,
        models: ModelSource = None,
    ) -> torch.Tensor:
        """Decode with the trained model found in ``models`` (see :func:`fedsqueeze.decode`); no reference."""
        return cls.decode_flat(body, spec, seed=seed, models=models)

    @classmethod
    @abstractmethod
    def decode_flat(
        cls, body: bytes, spec: UpdateSpec, *, seed: int, models: ModelSource = None
    ) -> torch.Tensor:
        """Decode a body with the autoencoder found in ``models`` (``None``: the process-wide store).

        Raises
        ------
        PayloadError
            A malformed body, or a fingerprint that ``models`` and the store do not know.
        """
