"""TGAP: pre-train the CG-FedLLM autoencoder on a temporal ensemble of client update snapshots.

Snapshots ``G = [G_i^t]`` over clients ``i`` and time steps ``t`` are pooled; the autoencoder is trained to
reconstruct them with an MSE loss (on real parameters only, not on the layout's zero padding) and Adam at
lr 2e-4, as the paper states. Batch size and step count are not stated by the paper; the defaults here are
ours. Snapshots come from ``fedsqueeze run --capture-updates`` (``captures.safetensors`` with keys
``r{round}/c{client}/{tensor}``, see :func:`load_captures`) or from in-memory lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import TGAPConfig  # the one TGAP config: the run's [tgap] section
from ..errors import ConfigError
from ..safetensors_errors import reading_safetensors
from ..spec import UpdateSpec
from .autoencoder import AEConfig, CGAutoEncoder
from .layout import natural_key
from .normalize import normalize
from .transform import prepare_images

__all__ = ["Captures", "TGAPConfig", "load_captures", "stack_snapshots", "tgap_pretrain", "tgap_traffic"]

_EVAL_BATCH = 16  # snapshots per forward pass when measuring the final training reconstruction


@dataclasses.dataclass(frozen=True)
class Captures:
    """Captured updates: ``flats[i]`` is client ``clients[i]``'s update in round ``rounds[i]``."""

    spec: UpdateSpec
    rounds: tuple[int, ...]
    clients: tuple[int, ...]
    flats: torch.Tensor  # (N, d) float32

    def select(self, mask: Sequence[bool]) -> Captures:
        idx = [i for i, keep in enumerate(mask) if keep]
        return Captures(
            self.spec,
            tuple(self.rounds[i] for i in idx),
            tuple(self.clients[i] for i in idx),
            self.flats[idx] if idx else self.flats[:0],
        )

    def __len__(self) -> int:
        return len(self.rounds)


def load_captures(path: str | Path, spec: UpdateSpec | None = None) -> Captures:
    """Read ``captures.safetensors`` (keys ``r{round}/c{client}/{tensor}``).

    The spec is rebuilt from the tensor names in natural order unless ``spec`` is given (the layout sorts
    names itself, so the order only matters for matching a run's own spec).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no captures at {path}; make them with `fedsqueeze run ... --capture-updates all`")
    groups: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    with reading_safetensors(
        path, "give the captures.safetensors of `fedsqueeze run ... --capture-updates all`"
    ):
        tensors = load_file(str(path))
    for key, t in tensors.items():
        parts = key.split("/", 2)
        if len(parts) != 3 or not parts[0].startswith("r") or not parts[1].startswith("c"):
            raise ConfigError(f"{path}: key {key!r} is not r{{round}}/c{{client}}/{{tensor}}")
        groups.setdefault((int(parts[0][1:]), int(parts[1][1:])), {})[parts[2]] = t
    if not groups:
        raise ConfigError(f"{path} holds no captured updates")
    if spec is None:
        first = next(iter(groups.values()))
        spec = UpdateSpec.from_shapes({n: tuple(first[n].shape) for n in sorted(first, key=natural_key)})
    keys = sorted(groups)
    flats = torch.stack([spec.flatten({n: groups[k][n] for n in spec.names}) for k in keys])
    return Captures(spec, tuple(r for r, _ in keys), tuple(c for _, c in keys), flats)


_MIXED = "tgap: snapshots are either all mappings of tensors or all flat tensors"


def stack_snapshots(
    snapshots: torch.Tensor | Sequence[torch.Tensor | Mapping[str, torch.Tensor]] | Captures,
    spec: UpdateSpec | None = None,
) -> tuple[torch.Tensor, UpdateSpec]:
    """Any accepted snapshot form → ``(N, d)`` float32 and its spec."""
    if isinstance(snapshots, Captures):
        return snapshots.flats.to(torch.float32), snapshots.spec
    if isinstance(snapshots, torch.Tensor):
        if spec is None:
            raise ConfigError("tgap: a tensor of flat snapshots needs its spec")
        return snapshots.reshape(-1, spec.numel).to(torch.float32), spec
    items = list(snapshots)
    if not items:
        raise ConfigError("tgap needs at least one snapshot")
    if isinstance(items[0], Mapping):
        maps = [s for s in items if isinstance(s, Mapping)]
        if len(maps) != len(items):
            raise ConfigError(_MIXED)
        spec = spec or UpdateSpec.from_tensors(maps[0])
        return torch.stack([spec.flatten(s) for s in maps]), spec
    if spec is None:
        raise ConfigError("tgap: flat snapshots need their spec")
    flats = [s for s in items if isinstance(s, torch.Tensor)]
    if len(flats) != len(items):
        raise ConfigError(_MIXED)
    return torch.stack([s.reshape(-1).to(torch.float32) for s in flats]), spec


def tgap_pretrain(
    snapshots: torch.Tensor | Sequence[torch.Tensor | Mapping[str, torch.Tensor]] | Captures,
    spec: UpdateSpec | None = None,
    *,
    ae: AEConfig | None = None,
    config: TGAPConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[CGAutoEncoder, dict[str, Any]]:
    """Train a fresh autoencoder on ``snapshots``; return it (eval mode) and a training log.

    Parameters
    ----------
    snapshots
        ``Captures``, an ``(N, d)`` tensor with ``spec``, or a list of flat tensors / named-tensor mappings.
    ae
        Architecture and normalisation (default: the paper's, ``AEConfig()``).
    config
        Optimiser settings (default ``TGAPConfig()``).
    progress
        Called as ``progress(step, loss)`` after every step (e.g. to drive a progress bar).
    device
        Where the training runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...): the model and the snapshot images
        are moved there. Mini-batch indices are drawn on the CPU from the seeded generator, so the batches
        are the same on every device. The returned model is on the CPU (the codecs run there).

    Returns
    -------
    (model, log)
        ``log`` has ``steps``, ``loss_first``, ``loss_last`` (masked MSE in normalised units),
        ``train_rel_error`` (‖u − û‖²/‖u‖² over all snapshots, real units) and ``num_snapshots``.
    """
    ae = ae or AEConfig()
    cfg = config or TGAPConfig()
    flats, spec = stack_snapshots(snapshots, spec)
    images, scales, lay = prepare_images(flats, spec, ae.normalize, ae.multiple)
    dev = _device(device)
    images, mask = images.to(dev), lay.mask().to(dev)
    # Scale-free loss: divide by the mean energy of the (normalised) data so lr 2e-4 means the same thing
    # for raw updates of RMS 1e-4 and normalised ones; Adam is scale-invariant in the gradient anyway.
    energy = float((images.pow(2) * mask).sum() / (mask.sum() * images.shape[0])) or 1.0
    torch.manual_seed(cfg.seed)
    model = CGAutoEncoder(ae).to(dev)  # initialised on the CPU (seeded), then moved: same start everywhere
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    first = last = math.nan
    bs = min(cfg.batch_size, images.shape[0])
    for step in range(cfg.steps):
        idx = torch.randint(images.shape[0], (bs,), generator=gen)
        x = images[idx.to(dev)]
        loss = ((model(x) - x).pow(2) * mask).sum() / (mask.sum() * bs * energy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        if step == 0:
            first = last
        if progress is not None:
            progress(step + 1, last)
    model.eval()
    # The codec's reconstruction (normalise, encode, decode, de-normalise) of every snapshot, in batches on
    # the training device (eval-mode BatchNorm makes it independent of the batching).
    num = den = 0.0
    with torch.no_grad():
        for a in range(0, images.shape[0], _EVAL_BATCH):
            part = slice(a, a + _EVAL_BATCH)
            img = model(images[part]).to("cpu")
            rec = normalize(lay.from_images(img), scales[part], spec, ae.normalize, inverse=True)
            f = flats[part].double()
            num += float((f - rec.double()).pow(2).sum())
            den += float(f.pow(2).sum())
    model = model.to("cpu")
    model.trained_spec = spec
    log = {
        "steps": cfg.steps,
        "batch_size": bs,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "loss_first": first,
        "loss_last": last,
        "train_rel_error": num / den if den > 0 else None,
        "num_snapshots": int(flats.shape[0]),
        "image": [lay.height, lay.width],
        "device": str(dev),
        "spec": spec.to_json(),
    }
    return model, log


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"tgap device {device!r}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"tgap device must be cpu or cuda[:N], got {device!r}")
    return dev


def tgap_traffic(
    *,
    snapshot_frames: Sequence[int] | int,
    encoder_bytes: int,
    num_clients: int,
    downlink_bytes: int = 0,
) -> dict[str, int]:
    """Communication spent on TGAP, to add to a run's totals.

    Parameters
    ----------
    snapshot_frames
        Byte lengths of the snapshot uploads (federated collection: every client update of the TGAP rounds;
        local collection: each client's snapshots sent once to the server), or their sum.
    encoder_bytes
        The encoder's size (``CGAutoEncoder.encoder_bytes()``), downloaded once by each client.
    num_clients
        Clients that download the encoder.
    downlink_bytes
        Global-model downloads of a federated collection run (0 for local collection).
    """
    up = snapshot_frames if isinstance(snapshot_frames, int) else int(sum(snapshot_frames))
    enc = int(encoder_bytes) * int(num_clients)
    return {
        "tgap_uplink_bytes": up,
        "tgap_downlink_bytes": int(downlink_bytes) + enc,
        "encoder_download_bytes": enc,
        "tgap_total_bytes": up + int(downlink_bytes) + enc,
    }
