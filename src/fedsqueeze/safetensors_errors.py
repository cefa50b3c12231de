"""Reading a ``.safetensors`` file the user named: a file in another format is one line, not a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

__all__ = ["reading_safetensors"]


@contextmanager
def reading_safetensors(path: str | Path, hint: str) -> Iterator[None]:
    """Turn a ``SafetensorError`` raised inside the block into a :class:`ConfigError` naming ``path``.

    ``hint`` says where a valid file comes from (e.g. ``"make one with `fedsqueeze run --capture-updates`"``).
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        why = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise ConfigError(f"{path} is not a safetensors file ({why}); {hint}") from None
