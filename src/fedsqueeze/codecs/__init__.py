"""Codecs: registry, error feedback and the universal decoder.

Layout: the shared parts sit at the top (``base`` the codec contract, ``budget`` the bit budgets and the
option checks of every budget codec, ``registry`` with its :data:`~.registry.BUILTIN` list, ``decode``,
``error_feedback``, ``predictive`` the wrapper that codes an update against a shared reference); each codec
is one module (``dense``) or one folder per family (``baselines/``: topk, randk, seedproj, qsgd, signsgd,
powersgd, compeft; ``flm/``: flm_topk, fed_cvlc and their packet format; ``wf_ecq/``; ``blockwise/``:
blockwise8, nf4, fp4). The learned CG-FedLLM codecs live in :mod:`fedsqueeze.cg_fedllm`, above this
package; the registry loads them by module path (:data:`~.registry.PLUGINS`).
"""

from .base import Codec
from .budget import budget_bits, paper_packets
from .decode import decode, decode_flat
from .error_feedback import ErrorFeedback
from .predictive import Predictive
from .registry import available, by_id, codec_class, get, register, with_rate

__all__ = [
    "Codec",
    "ErrorFeedback",
    "Predictive",
    "available",
    "budget_bits",
    "by_id",
    "codec_class",
    "decode",
    "decode_flat",
    "get",
    "paper_packets",
    "register",
    "with_rate",
]
