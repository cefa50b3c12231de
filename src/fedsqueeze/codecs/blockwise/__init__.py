"""The blockwise absmax quantizers practitioners ship (bitsandbytes-style): ``blockwise8``, ``nf4``, ``fp4``.

The codecs are in ``codec``; the 4-bit level tables and the per-tensor block layout in ``_levels``.
"""

from .codec import FP4, NF4, Blockwise8

__all__ = ["FP4", "NF4", "Blockwise8"]
