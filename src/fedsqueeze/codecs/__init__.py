"""Codecs: registry, error feedback and the universal decoder."""

from .base import Codec
from .budget import budget_bits, paper_packets
from .decode import decode, decode_flat
from .error_feedback import ErrorFeedback
from .registry import available, by_id, codec_class, get, register

__all__ = [
    "Codec",
    "ErrorFeedback",
    "available",
    "budget_bits",
    "by_id",
    "codec_class",
    "decode",
    "decode_flat",
    "get",
    "paper_packets",
    "register",
]
