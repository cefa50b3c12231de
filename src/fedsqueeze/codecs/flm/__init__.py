"""The packetized TopK family: ``flm_topk`` and ``fed_cvlc``.

Both send kept entries in 1500-byte packets with per-packet value widths: the packet format is ``_packets``,
the interval-size search and per-interval allocation ``_plan``.
"""

from .fed_cvlc import FedCVLC
from .flm_topk import FLMTopK

__all__ = ["FLMTopK", "FedCVLC"]
