"""Error feedback: a client-side wrapper that keeps what the codec dropped and adds it next time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..spec import UpdateSpec
from .base import Codec, Reference
from .decode import decode_flat
from .registry import get

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Wrap ``codec`` with a residual ``e``: send ``C(u + e)``, keep ``e <- (u + e) - decode(C(u + e))``.

    The residual is held in float64, so ``û + e_new == u + e_old`` holds exactly in float64 for float32
    inputs (the difference of two float32 numbers less than 2**29 apart in scale is exact in float64).
    The residual is decoded from the very bytes sent, so it also absorbs stochastic rounding.

    With a codec that predicts from a reference (``uses_reference``: ``ErrorFeedback(Predictive(codec))``),
    give :meth:`encode` the round's ``reference``: the codec predicts ``u + e`` from it, and the residual is
    ``e <- (u + e) - decode(frame, reference)``, the reconstruction the server makes from the same reference.
    Other codecs ignore a reference.

    Parameters
    ----------
    codec
        Any registered codec; a private copy (``codec.fresh()``) is kept so codec state is per client.
    enabled
        With ``False`` the wrapper is a pass-through (no residual), so callers can treat both alike.
    """

    def __init__(self, codec: Codec, *, enabled: bool = True) -> None:
        self.codec = codec.fresh()
        self.enabled = enabled
        self.residual: torch.Tensor | None = None
        self.spec: UpdateSpec | None = None
        self.last_decoded: torch.Tensor | None = None

    def encode(
        self, update: Mapping[str, torch.Tensor], *, seed: int = 0, reference: Reference | None = None
    ) -> bytes:
        """Compress ``update`` plus the residual; update the residual from the bytes produced.

        Parameters
        ----------
        update
            Named tensors of one client's update.
        seed
            Seed of the codec's random choices (frame header).
        reference
            The reference both ends hold, for a codec with ``uses_reference`` (a mapping of the update's
            tensors or a flat tensor); ``None`` makes such a codec code against zero (a plain frame). Other
            codecs ignore it.
        """
        spec = UpdateSpec.from_tensors(update)
        return self.encode_flat(spec.flatten(update, torch.float64), spec, seed=seed, reference=reference)

    def encode_flat(
        self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int = 0, reference: Reference | None = None
    ) -> bytes:
        """Like :meth:`encode` for a flat vector of ``spec``."""
        if self.spec is not None and self.spec != spec:
            raise ConfigError("ErrorFeedback: the update's spec changed between rounds")
        self.spec = spec
        p = flat.detach().to(torch.float64)
        if self.enabled and self.residual is not None:
            p = p + self.residual
        p32 = p.to(torch.float32)
        blob = self.codec.encode_with_spec(p32, spec, seed=seed, reference=reference)
        decoded = decode_flat(blob, spec, reference=reference)
        self.last_decoded = decoded
        if self.enabled:
            self.residual = p - decoded.to(torch.float64)
        return blob

    @property
    def residual_norm(self) -> float:
        return 0.0 if self.residual is None else float(self.residual.norm())

    def set_codec(self, codec: Codec) -> None:
        """Code with ``codec`` from the next :meth:`encode` on (a rate schedule's next rate,
        ``fl.uplink_rates``). The residual carries over; the codec's state starts afresh when its name or
        options differ from the current codec's, and stays when they are the same."""
        if codec.name != self.codec.name or _options_key(codec) != _options_key(self.codec):
            self.codec = codec.fresh()

    def state_dict(self) -> dict[str, Any]:
        """Residual, spec, the wrapped codec's state and the options it belongs to."""
        return {
            "residual": None if self.residual is None else self.residual.clone(),
            "spec": None if self.spec is None else self.spec.to_json(),
            "codec_state": self.codec.state_dict(),
            "codec_options": _options_key(self.codec),
            "enabled": self.enabled,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state saved under other options of the same codec (a rate schedule)
        restores that codec, so a following :meth:`set_codec` decides as in the uninterrupted run."""
        res = state.get("residual")
        self.residual = None if res is None else torch.as_tensor(res, dtype=torch.float64).clone()
        spec = state.get("spec")
        self.spec = None if spec is None else UpdateSpec.from_json(spec)
        self.enabled = bool(state.get("enabled", self.enabled))
        saved = state.get("codec_options")
        if isinstance(saved, str) and saved != _options_key(self.codec):
            self.codec = get(self.codec.name, **json.loads(saved))
        self.codec.load_state_dict(state.get("codec_state", {}))


def _options_key(codec: Codec) -> str:
    """``codec``'s options as canonical JSON (what a saved state records and compares)."""
    return json.dumps(codec.options(), sort_keys=True, default=str)
