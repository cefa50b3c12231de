"""The "ResNet-3" convolutional autoencoder of CG-FedLLM (``docs/cg-fedllm.md``, "The autoencoder").

Encoder: reflection pad, 3×3 conv 1→1, BN, ReLU; ``depth`` stride-2 3×3 conv stages (channels 1→2→4→…→
``2**depth``), each with BN and ReLU; ``res_blocks`` residual blocks. Decoder: residual blocks; ``depth``
stride-2 3×3 transposed convs back to 1 channel, each with BN and ReLU; reflection pad, 7×7 conv 1→1, Tanh.
With the paper's ``depth = 6`` the latent ``[64, H/64, W/64]`` is 1/64 of the input and each half has about
247 k parameters. Conv biases are off before BN (CycleGAN style).

Two switches exist for the "sound" variant (``cg_fedllm_q``): ``relu_ends=False`` drops the ReLU after the
1-channel stem and after the last upsampling stage (they discard the negative half of a signed signal), and
``tanh_head=False`` replaces the Tanh (which bounds outputs to ±1) by the identity. The paper setting is
``relu_ends=True, tanh_head=True``.

Only torch is imported here (no transformers), so codec modules can import this cheaply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..errors import ConfigError
from ..spec import UpdateSpec
from .normalize import MODES

__all__ = ["AEConfig", "CGAutoEncoder"]


@dataclasses.dataclass(frozen=True)
class AEConfig:
    """Architecture and input normalisation of a :class:`CGAutoEncoder`.

    Parameters
    ----------
    depth
        Number of stride-2 stages; the layout pads ``H`` and ``W`` to multiples of ``2**depth``.
    channels
        Latent channels (default ``2**depth``, which makes the latent ``1/2**depth`` of the padded input).
        Intermediate stages interpolate geometrically from 1.
    res_blocks
        Residual blocks on each side (paper: 3).
    normalize
        ``none`` (paper), ``global_rms`` or ``tensor_rms`` (see :mod:`fedsqueeze.cg_fedllm.normalize`).
    relu_ends, tanh_head
        Paper switches (see the module docstring).
    """

    depth: int = 6
    channels: int | None = None
    res_blocks: int = 3
    normalize: str = "none"
    relu_ends: bool = True
    tanh_head: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 8:
            raise ConfigError(f"autoencoder depth must be in 1..8, got {self.depth}")
        if self.channels is not None and not 1 <= self.channels <= 4**self.depth:
            # more latent values than inputs would make max_body_bytes unbounded by the spec
            raise ConfigError(
                f"autoencoder channels must be in 1..4**depth ({4**self.depth}), got {self.channels}"
            )
        if not 0 <= self.res_blocks <= 16:
            raise ConfigError(f"autoencoder res_blocks must be in 0..16, got {self.res_blocks}")
        if self.normalize not in MODES:
            raise ConfigError(
                f"autoencoder normalize must be one of {', '.join(MODES)}, got {self.normalize!r}"
            )

    @property
    def latent_channels(self) -> int:
        return self.channels if self.channels is not None else 2**self.depth

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def stage_channels(self) -> list[int]:
        c = self.latent_channels
        return [1] + [max(1, round(c * 2.0 ** (k - self.depth))) for k in range(1, self.depth + 1)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AEConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"autoencoder config has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)


def _pad(x: torch.Tensor, p: int) -> torch.Tensor:
    # Reflection needs more than p pixels per side; tiny latents (e.g. 1×1) fall back to replication.
    mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.b1(self.c1(_pad(x, 1))))
        return x + self.b2(self.c2(_pad(h, 1)))


class _Encoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        ch = cfg.stage_channels()
        self.relu_stem = cfg.relu_ends
        self.stem = nn.Conv2d(1, 1, 3, bias=False)
        self.stem_bn = nn.BatchNorm2d(1)
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in itertools.pairwise(ch)
        )
        self.res = nn.ModuleList(_ResBlock(ch[-1]) for _ in range(cfg.res_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(_pad(x, 1)))
        if self.relu_stem:
            x = F.relu(x)
        for stage in self.down:
            x = stage(x)
        for blk in self.res:
            x = blk(x)
        return x


class _Decoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        ch = cfg.stage_channels()[::-1]
        self.relu_last, self.tanh = cfg.relu_ends, cfg.tanh_head
        self.res = nn.ModuleList(_ResBlock(ch[0]) for _ in range(cfg.res_blocks))
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1, bias=False),
                nn.BatchNorm2d(b),
            )
            for a, b in itertools.pairwise(ch)
        )
        self.head = nn.Conv2d(1, 1, 7)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for blk in self.res:
            z = blk(z)
        for i, stage in enumerate(self.up):
            z = stage(z)
            if self.relu_last or i < len(self.up) - 1:
                z = F.relu(z)
        z = self.head(_pad(z, 3))
        return torch.tanh(z) if self.tanh else z


class CGAutoEncoder(nn.Module):
    """Encoder and decoder of CG-FedLLM for ``[N, 1, H, W]`` factor-stack images.

    ``H`` and ``W`` must be multiples of ``config.multiple``; the latent is
    ``[N, latent_channels, H / 2**depth, W / 2**depth]``.

    ``trained_spec`` is the :class:`~fedsqueeze.UpdateSpec` of the updates it was trained on (set by
    :func:`~fedsqueeze.cg_fedllm.tgap.tgap_pretrain` and by :func:`~fedsqueeze.cg_fedllm.store.load` when the
    sidecar records it; ``None``: unknown). The ``cg_fedllm*`` codecs refuse updates of another spec.
    """

    trained_spec: UpdateSpec | None = None

    def __init__(self, config: AEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AEConfig()
        self.encoder = _Encoder(self.config)
        self.decoder = _Decoder(self.config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        m = self.config.multiple
        if height % m or width % m:
            raise ConfigError(f"image {height}×{width} is not a multiple of {m}")
        return (self.config.latent_channels, height // m, width // m)

    def encoder_bytes(self) -> int:
        """fp32 size of the encoder's weights and BN statistics: the one-time download of each client."""
        return sum(4 * t.numel() for t in self.encoder.state_dict().values() if t.is_floating_point())

    def fingerprint(self) -> bytes:
        """8-byte SHA-256 prefix of the config and every tensor of the state dict (sorted by key)."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for key, t in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(str(t.dtype).encode())
            h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
        return h.digest()[:8]
