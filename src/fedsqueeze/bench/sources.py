"""Benchmark sources: synthetic update vectors and captured real LoRA updates.

Names accepted by :func:`make_source` / :func:`load_source`:

``gaussian``, ``laplace``, ``student-t``
    One tensor ``"u"`` of ``d`` i.i.d. values with unit variance (Student-t with ν = 3, scaled by 1/√3).
    Its shape is a matrix ``(rows, d // rows)`` with ``rows`` the largest divisor of ``d`` not above √d
    (1024 × 1024 for d = 2^20), so shape-aware codecs (PowerSGD) see matrices as they would in LoRA.
``blocks``
    96 tensors ``"block00"`` … ``"block95"``, each i.i.d. Gaussian with its own σ_j, log-uniform over 1.5
    decades (stratified: one σ per 1/96 of the range, jittered and shuffled by the seed). Each block has
    16,384 values (d = 1,572,864, 128 × 128 matrices) unless ``d`` is given, then ``d // 96`` values (same
    matrix shaping as above).
``file:PATH`` or ``file:PATH#SELECTOR``
    Tensors from a safetensors file of captured updates; ``d`` and ``seed`` are ignored. Accepted layouts:

    - the named LoRA tensors of one update (any names without a round/client prefix);
    - many updates with keys ``r{round}/c{client}/{tensor_name}`` (what ``fedsqueeze run`` captures) or
      ``client{c}/round{r}/{tensor_name}``.

    ``SELECTOR`` picks one update by its prefix, e.g. ``file:caps.safetensors#r3/c7``; without it the first
    update is used (lowest round, then lowest client). The tensors keep their names without the prefix and are
    converted to float32, in the sorted key order of the file.

The blocks used for reverse water-filling and the Shannon lower bound are always the tensors of the source:
the synthetic blocks for ``blocks``, the single tensor for i.i.d. sources, each LoRA tensor for real updates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..safetensors_errors import reading_safetensors

__all__ = [
    "BLOCKS",
    "BLOCK_SIZE",
    "SYNTHETIC",
    "Source",
    "block_stats",
    "load_captures",
    "load_source",
    "make_source",
]

SYNTHETIC = ("gaussian", "laplace", "student-t", "blocks")
BLOCKS = 96
BLOCK_SIZE = 16_384
DECADES = 1.5
STUDENT_NU = 3.0

_PREFIXES = (
    re.compile(r"^r(?P<round>\d+)/c(?P<client>\d+)/(?P<name>.+)$"),
    re.compile(r"^client(?P<client>\d+)/round(?P<round>\d+)/(?P<name>.+)$"),
)


@dataclass(frozen=True)
class Source:
    """A benchmark source: named tensors plus what the reference curves need.

    Attributes
    ----------
    name
        The source string as given.
    tensors
        Named float32 tensors (the update).
    family
        ``gaussian`` / ``laplace`` / ``student-t`` for synthetic sources (exact entropy power known), else
        ``None`` (entropy power estimated from the data).
    """

    name: str
    tensors: dict[str, torch.Tensor]
    family: str | None

    @property
    def d(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-block (per-tensor) second moments and sizes, see :func:`block_stats`."""
        return block_stats(self.tensors)

    def entropy_ratios(self, method: str = "ggd") -> np.ndarray:
        """``N/σ²`` per block: closed form for synthetic families, estimated (``method``) for real data."""
        from ..analysis.rd import entropy_power_ratio, entropy_power_ratio_closed_form

        if self.family is not None:
            r = entropy_power_ratio_closed_form(self.family, STUDENT_NU)
            return np.full(len(self.tensors), r)
        return np.array([entropy_power_ratio(t, method) for t in self.tensors.values()])


def block_stats(tensors: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Second moment (mean square, i.e. variance about zero) and element count of each tensor.

    The mean square, not the centred variance, is used because the benchmark's distortion is relative to
    ``‖u‖²``; the water-filling distortion then is relative to exactly the same energy.
    """
    ms, n = [], []
    for t in tensors.values():
        x = t.detach().reshape(-1).to(torch.float64)
        n.append(x.numel())
        ms.append(float(x.square().mean()) if x.numel() else 0.0)
    return np.asarray(ms), np.asarray(n, dtype=np.int64)


def _matrix_shape(n: int) -> tuple[int, int]:
    rows = math.isqrt(n)
    while rows > 1 and n % rows:
        rows -= 1
    return (max(rows, 1), n // max(rows, 1)) if n else (0, 0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def _iid(family: str, d: int, seed: int) -> torch.Tensor:
    if family == "gaussian":
        return torch.randn(d, generator=_gen(seed))
    if family == "laplace":
        u = torch.rand(d, generator=_gen(seed), dtype=torch.float64) - 0.5
        # inverse CDF with scale b = 1/√2 (unit variance); clamp keeps log finite at u = ±0.5
        mag = -torch.log1p(-2.0 * u.abs()).clamp(max=60.0)
        return (torch.sign(u) * mag / math.sqrt(2.0)).to(torch.float32)
    if family == "student-t":
        rng = np.random.default_rng(seed)
        x = rng.standard_t(STUDENT_NU, size=d) / math.sqrt(STUDENT_NU / (STUDENT_NU - 2.0))
        return torch.from_numpy(x.astype(np.float32))
    raise ConfigError(f"unknown synthetic family {family!r}")


def _block_sigmas(seed: int, blocks: int = BLOCKS) -> np.ndarray:
    rng = np.random.default_rng([seed, 96])
    u = (rng.permutation(blocks) + rng.uniform(size=blocks)) / blocks  # stratified log-uniform
    return 10.0 ** (DECADES * (u - 0.5))


def _blocks(d: int | None, seed: int) -> dict[str, torch.Tensor]:
    size = BLOCK_SIZE if d is None else d // BLOCKS
    if size < 1:
        raise ConfigError(f"source 'blocks' needs d >= {BLOCKS}, got {d}")
    sig = _block_sigmas(seed)
    g = torch.randn(BLOCKS, size, generator=_gen(seed))
    g *= torch.from_numpy(sig.astype(np.float32))[:, None]
    shape = _matrix_shape(size)
    return {f"block{j:02d}": g[j].reshape(shape) for j in range(BLOCKS)}


def _split_selector(spec: str) -> tuple[Path, str | None]:
    path, _, sel = spec.partition("#")
    return Path(path), (sel.strip("/") or None)


def _group_keys(keys: list[str]) -> tuple[dict[tuple[int, int, str], list[tuple[str, str]]], list[str]]:
    """Keys with a round/client prefix grouped by ``(round, client, prefix)``; the other keys."""
    groups: dict[tuple[int, int, str], list[tuple[str, str]]] = {}
    plain: list[str] = []
    for k in keys:
        for pat in _PREFIXES:
            m = pat.match(k)
            if m:
                prefix = k[: len(k) - len(m["name"]) - 1]
                key = (int(m["round"]), int(m["client"]), prefix)
                groups.setdefault(key, []).append((k, m["name"]))
                break
        else:
            plain.append(k)
    return groups, plain


_HINT = "give one written by `fedsqueeze run ... --capture-updates` or safetensors.torch.save_file"


def _load_file(spec: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    path, selector = _split_selector(spec)
    if not path.is_file():
        raise ConfigError(f"source file {str(path)!r} does not exist")
    with reading_safetensors(path, _HINT), safe_open(str(path), framework="pt") as f:
        groups, plain = _group_keys(list(f.keys()))
        if not groups:
            if selector is not None:
                raise ConfigError(
                    f"{path} holds one update without round/client prefixes; drop '#{selector}'"
                )
            chosen = [(k, k) for k in sorted(plain)]
        else:
            if selector is None:
                chosen = groups[min(groups)]
            else:
                match = [v for (_, _, p), v in groups.items() if p == selector]
                if not match:
                    found = ", ".join(p for *_, p in sorted(groups)[:8])
                    raise ConfigError(f"no update {selector!r} in {path}; first ones found: {found}")
                chosen = match[0]
            chosen = sorted(chosen, key=lambda kv: kv[1])
        if not chosen:
            raise ConfigError(f"{path} holds no tensors")
        return {name: f.get_tensor(k).to(torch.float32).contiguous() for k, name in chosen}


def load_captures(spec: str) -> dict[int, dict[int, Source]]:
    """Every update of a captures file, by round and client: ``{round: {client: Source}}``.

    Parameters
    ----------
    spec
        ``file:PATH`` or ``PATH`` of a safetensors file with keys ``r{round}/c{client}/{tensor}`` (what
        ``fedsqueeze run --capture-updates`` writes) or ``client{c}/round{r}/{tensor}``; no ``#selector``.

    Returns
    -------
    dict
        Each update as a :class:`Source` named ``file:PATH#r{round}/c{client}`` (the prefix as stored), its
        tensors in sorted name order as in :func:`load_source`, rounds and clients ascending.

    Raises
    ------
    ConfigError
        A missing or unreadable file, a selector, a file without round/client prefixes, or updates of one file
        with different tensor names or shapes.
    """
    from safetensors import safe_open

    text = spec[len("file:") :] if spec.startswith("file:") else spec
    path, selector = _split_selector(text)
    if selector is not None:
        raise ConfigError(
            f"captures {text!r}: give the whole file (drop '#{selector}'), every update is read"
        )
    if not path.is_file():
        raise ConfigError(f"source file {str(path)!r} does not exist")
    out: dict[int, dict[int, Source]] = {}
    shapes: dict[str, tuple[int, ...]] | None = None
    with reading_safetensors(path, _HINT), safe_open(str(path), framework="pt") as f:
        groups, _ = _group_keys(list(f.keys()))
        if not groups:
            raise ConfigError(f"{path} holds no r{{round}}/c{{client}}/ captures (one update only?)")
        for (rnd, client, prefix), keys in sorted(groups.items()):
            tensors = {
                name: f.get_tensor(k).to(torch.float32).contiguous()
                for k, name in sorted(keys, key=lambda kv: kv[1])
            }
            got = {n: tuple(t.shape) for n, t in tensors.items()}
            if shapes is None:
                shapes = got
            elif got != shapes:
                raise ConfigError(f"{path}: update {prefix} has other tensors or shapes than the first one")
            out.setdefault(rnd, {})[client] = Source(f"file:{path}#{prefix}", tensors, None)
    return out


def load_source(name: str, d: int | None = None, seed: int = 0) -> Source:
    """Build the :class:`Source` called ``name`` (see the module docstring for the names).

    Parameters
    ----------
    name
        ``gaussian``, ``laplace``, ``student-t``, ``blocks`` or ``file:PATH[#SELECTOR]``.
    d
        Length for synthetic sources (i.i.d. default 2^20; ``blocks`` default 96 × 16,384).
    seed
        Seed of the synthetic data.
    """
    if name.startswith("file:"):
        return Source(name, _load_file(name[len("file:") :]), None)
    if d is not None and d < 1:
        raise ConfigError(f"d must be positive, got {d}")
    if name == "blocks":
        return Source(name, _blocks(d, seed), "gaussian")
    if name in SYNTHETIC:
        n = 1 << 20 if d is None else d
        return Source(name, {"u": _iid(name, n, seed).reshape(_matrix_shape(n))}, name)
    raise ConfigError(f"unknown source {name!r}; use one of {', '.join(SYNTHETIC)} or file:PATH[#r3/c7]")


def make_source(name: str, d: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Named tensors of source ``name``; see :func:`load_source` for the block structure as well."""
    return load_source(name, d, seed).tensors
