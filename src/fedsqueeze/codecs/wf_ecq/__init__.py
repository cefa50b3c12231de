"""``wf_ecq``: water-filling entropy-coded quantization (the codec is in ``codec``).

Its parts: the GGD entropy models (``_model``), the step-size search (``_plan``), the measured budget fill
(``_fill``) and the trellis-coded quantizer (``_tcq``).
"""

from .codec import WfEcq

__all__ = ["WfEcq"]
