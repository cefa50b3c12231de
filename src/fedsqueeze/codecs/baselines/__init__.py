"""The classical baseline codecs, one module each: topk, randk, seedproj, qsgd, signsgd, powersgd and
compeft.

Their shared value coders, TopK selection and rate search live in ``_util``.
"""

from .compeft import ComPEFT
from .powersgd import PowerSGD
from .qsgd import QSGD
from .randk import RandK
from .seedproj import SeedProj
from .signsgd import SignSGD
from .topk import TopK

__all__ = ["QSGD", "ComPEFT", "PowerSGD", "RandK", "SeedProj", "SignSGD", "TopK"]
