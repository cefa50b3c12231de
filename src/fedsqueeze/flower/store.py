"""The client-side state store: what a node keeps between the rounds it takes part in, one version per round.

Both mods and the job's ClientApp keep their state here, each under its own *part*: ``"ef"`` (the
error-feedback residual and codec state) and ``"down"`` (the node's copy of the downlink state ``θ̃``).
A version saved in round ``r`` is read back by :meth:`StateStore.load` with ``before=r'`` for any later
round ``r' > r``: a round that a resumed job replays (the server stopped after the nodes trained, before it
checkpointed) starts from the same state as the first time, so the resumed job equals the uninterrupted one
bit for bit. The newest :data:`KEEP_VERSIONS` versions of each part are kept.

Where the versions live:

* with a state dir (the job's node state dir): ``ROOT/<part>-<ident>-r<round>.pt``, written atomically, so
  they survive a SuperNode restart and a resumed job finds them;
* otherwise in ``context.state``, ArrayRecord ``"fedsqueeze.<part>"`` (one ``r<round>`` array per version):
  in memory, for as long as the SuperNode keeps the run's Context.

Each version is a :func:`~.records.state_to_blob` of the part's dict plus ``round`` and ``id`` (what the
state belongs to: a job, a partition, a codec); a version of another ``id`` is not loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context

from ..fl.checkpoint import atomic_write
from .records import array_bytes, blob_to_state, bytes_array, state_to_blob

__all__ = ["KEEP_VERSIONS", "StateStore"]

KEEP_VERSIONS = 2  # versions kept per part: the one a replayed round needs, and the newest


def _round_of(name: str, prefix: str, suffix: str) -> int | None:
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    tail = name[len(prefix) : len(name) - len(suffix)]
    sign, digits = (-1, tail[1:]) if tail.startswith("-") else (1, tail)
    return sign * int(digits) if digits.isdigit() else None


class StateStore:
    """Versioned per-node state (see the module docstring).

    Parameters
    ----------
    context
        The node's Flower Context (its ``state`` holds the versions when there is no ``root``).
    root
        The node's state dir, or ``None``: in ``context.state``.
    ident
        What the state belongs to; part of the file names, and checked on load.
    """

    def __init__(self, context: Context, root: Path | None = None, ident: str = "") -> None:
        self.context, self.root, self.ident = context, root, ident

    @property
    def where(self) -> str:
        """``"file"`` or ``"context"``: where a loaded version came from."""
        return "context" if self.root is None else "file"

    def _blobs(self, part: str) -> dict[int, Any]:
        """round -> the version's file (``root``) or bytes (``context.state``)."""
        if self.root is not None:
            prefix = f"{part}-{self.ident}-r"
            found = {}
            for path in self.root.glob(f"{part}-{self.ident}-r*.pt") if self.root.is_dir() else ():
                rnd = _round_of(path.name, prefix, ".pt")
                if rnd is not None:
                    found[rnd] = path
            return found
        record = self.context.state.array_records.get(f"fedsqueeze.{part}")
        if record is None:
            return {}
        out = {}
        for key in record:
            rnd = _round_of(key, "r", "")
            if rnd is not None:
                out[rnd] = array_bytes(record, key)
        return out

    def load(self, part: str, before: int | None = None) -> dict[str, Any] | None:
        """The newest version of ``part`` saved in a round before ``before`` (any round: ``None``), or
        ``None`` when there is none of this store's ``ident``.

        Raises
        ------
        RuntimeError, OSError, EOFError, FedsqueezeError
            The version is unreadable (the caller decides whether that means starting fresh).
        """
        blobs = self._blobs(part)
        rounds = [r for r in blobs if before is None or r < before]
        if not rounds:
            return None
        found = blobs[max(rounds)]
        state = blob_to_state(found.read_bytes() if isinstance(found, Path) else found)
        return state if state.get("id") == self.ident else None

    def save(self, part: str, rnd: int, state: Mapping[str, Any]) -> None:
        """Save ``state`` as the version of round ``rnd`` (replacing one of the same round); keep the newest
        :data:`KEEP_VERSIONS`."""
        blob = state_to_blob({**state, "round": int(rnd), "id": self.ident})
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / f"{part}-{self.ident}-r{int(rnd)}.pt"
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
            versions = self._blobs(part)
            for r in sorted(versions)[:-KEEP_VERSIONS]:
                versions[r].unlink(missing_ok=True)
            return
        key = f"fedsqueeze.{part}"
        old = self.context.state.array_records.get(key) or ArrayRecord()
        arrays: dict[int, Any] = {}
        for name in old:
            version = _round_of(name, "r", "")
            if version is not None:
                arrays[version] = old[name]
        arrays[int(rnd)] = bytes_array(blob)
        keep = sorted(arrays)[-KEEP_VERSIONS:]
        self.context.state[key] = ArrayRecord({f"r{v}": arrays[v] for v in keep})
