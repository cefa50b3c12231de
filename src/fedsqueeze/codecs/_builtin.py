"""Imports every codec module of this package so each registers itself.

Adding a codec is one new module here (plus its tests); no list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

_NOT_CODECS = {"base", "registry", "budget", "error_feedback", "decode"}

for _info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if not _info.name.startswith("_") and _info.name not in _NOT_CODECS:
        importlib.import_module(f"{__package__}.{_info.name}")
