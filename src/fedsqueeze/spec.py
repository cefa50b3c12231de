"""UpdateSpec: the ordered names and shapes of the tensors a client sends.

Both ends of the wire hold the same spec (it follows from the model and the LoRA config), so payloads carry
only an 8-byte digest of it, never names or shapes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .errors import ConfigError, UpdateError

__all__ = ["MAX_SPEC_NUMEL", "UpdateSpec", "check_update"]

# A spec larger than this is refused: the wire format stores d in 32 bits and decoders size buffers by d.
MAX_SPEC_NUMEL = 2**31 - 1


def check_update(tensors: object) -> None:
    """Raise :class:`~fedsqueeze.UpdateError` unless ``tensors`` is a mapping of names to ``torch.Tensor``."""
    if not isinstance(tensors, Mapping):
        raise UpdateError(
            f"an update is a mapping of tensor names to tensors, e.g. {{'layer.lora_A': tensor}}; got "
            f"{type(tensors).__name__}" + (" (wrap it: {'name': tensor})" if torch.is_tensor(tensors) else "")
        )
    for name, value in tensors.items():
        if not torch.is_tensor(value):
            raise UpdateError(
                f"update entry {name!r} is a {type(value).__name__}, not a torch.Tensor; an update is a "
                "mapping of tensor names to tensors"
            )


@dataclass(frozen=True)
class UpdateSpec:
    """Ordered ``(name, shape)`` pairs of the update tensors.

    The order is part of the spec: the same tensors in another order are another spec, with another
    :attr:`digest`, and a frame made for one is refused by the other
    (:class:`~fedsqueeze.SpecMismatchError`). :meth:`from_tensors` keeps the mapping's order, so both ends
    should build it from tensors in the same order (e.g. the model's ``named_parameters()`` order), or ship
    the sender's :meth:`to_json`. Updates of any float dtype (fp16, bf16, fp64) are encoded from their
    float32 values, and decoding always returns float32 tensors.

    Parameters
    ----------
    entries
        ``(name, shape)`` pairs in wire order. Names must be unique and non-empty; shapes non-negative.
    """

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        names = [n for n, _ in self.entries]
        if len(set(names)) != len(names):
            raise ConfigError("UpdateSpec: tensor names must be unique")
        for name, shape in self.entries:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"UpdateSpec: tensor names must be non-empty strings, got {name!r}")
            if any((not isinstance(s, int)) or s < 0 for s in shape):
                raise ConfigError(f"UpdateSpec: shape of {name!r} must be non-negative ints, got {shape}")
        if self.numel > MAX_SPEC_NUMEL:
            raise ConfigError(f"UpdateSpec: {self.numel} elements exceed the limit {MAX_SPEC_NUMEL}")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> UpdateSpec:
        """Build a spec from a mapping of tensors, keeping the mapping's order.

        Raises
        ------
        UpdateError
            ``tensors`` is not a mapping of names to tensors (e.g. a bare tensor or a list).
        """
        check_update(tensors)
        return cls(tuple((str(k), tuple(int(s) for s in v.shape)) for k, v in tensors.items()))

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> UpdateSpec:
        """Build a spec from a mapping of names to shapes."""
        return cls(tuple((str(k), tuple(int(s) for s in v)) for k, v in shapes.items()))

    # -- properties ---------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.entries)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(s for _, s in self.entries)

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each tensor, in order."""
        return tuple(math.prod(s) for _, s in self.entries)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start offset of each tensor in the flat vector (length ``len(entries) + 1``)."""
        out = [0]
        for n in self.sizes:
            out.append(out[-1] + n)
        return tuple(out)

    @cached_property
    def numel(self) -> int:
        """Total number of elements ``d``."""
        return sum(self.sizes)

    @cached_property
    def digest(self) -> bytes:
        """8-byte SHA-256 prefix of the canonical text ``name:d0xd1...;`` of every entry."""
        text = "".join(f"{n}:{'x'.join(map(str, s))};" for n, s in self.entries)
        return hashlib.sha256(text.encode("utf-8")).digest()[:8]

    def __len__(self) -> int:
        return len(self.entries)

    # -- flatten / unflatten ------------------------------------------------------------------------
    def check(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`ConfigError` unless ``tensors`` has exactly this spec's names and shapes."""
        if list(tensors.keys()) != list(self.names):
            missing = [n for n in self.names if n not in tensors]
            extra = [n for n in tensors if n not in set(self.names)]
            raise ConfigError(
                f"update does not match the spec: missing {missing[:5]}, unexpected {extra[:5]}"
                + ("" if missing or extra else " (same names, different order)")
            )
        for name, shape in self.entries:
            got = tuple(tensors[name].shape)
            if got != shape:
                raise ConfigError(f"tensor {name!r} has shape {got}, the spec says {shape}")

    def flatten(
        self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Concatenate the tensors in spec order into one 1-D tensor of ``dtype`` (on the CPU)."""
        check_update(tensors)
        self.check(tensors)
        if not self.entries:
            return torch.zeros(0, dtype=dtype)
        return torch.cat([tensors[n].detach().reshape(-1).to("cpu", dtype) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a 1-D tensor of length ``numel`` back into named tensors (views of ``flat``)."""
        if flat.ndim != 1 or flat.numel() != self.numel:
            raise ConfigError(f"flat vector has shape {tuple(flat.shape)}, expected ({self.numel},)")
        return {
            name: flat[a:b].view(shape)
            for (name, shape), a, b in zip(self.entries, self.offsets[:-1], self.offsets[1:], strict=True)
        }

    def zeros(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """A mapping of zero tensors of this spec."""
        return self.unflatten(torch.zeros(self.numel, dtype=dtype))

    def to_json(self) -> list[list[object]]:
        """The spec as JSON values, ``[[name, [dim, ...]], ...]`` in wire order: what a receiver that does not
        hold the model can rebuild it from with :meth:`from_json`."""
        return [[n, list(s)] for n, s in self.entries]

    @classmethod
    def from_json(cls, data: Sequence[Sequence[Any]]) -> UpdateSpec:
        """The spec of :meth:`to_json`'s ``[[name, [dim, ...]], ...]`` (JSON values, hence ``Any``)."""
        return cls(tuple((str(n), tuple(int(x) for x in s)) for n, s in data))
