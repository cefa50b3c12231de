"""Where a magnitude sparsifier's budget goes between LoRA's A and B, on captured client updates.

Reads ``RUN/captures.safetensors`` (``fedsqueeze run --capture-updates ...``) and
``RUN/final_params.safetensors`` and prints, per captured client update: the mean magnitude of the A and B
entries, the share of each that a global top-``FRACTION`` selection keeps, and the cosine between each A
tensor's update and A itself after the run (near 1: the update is mostly weight decay's pull towards zero).

    python docs/results/lora_ab_capture.py RUN [FRACTION]    (FRACTION: default 0.03, TopK at ~1 bit/param)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file


def main(run: Path, fraction: float) -> None:
    caps = load_file(str(run / "captures.safetensors"))
    params = load_file(str(run / "final_params.safetensors"))
    updates: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in caps.items():
        rnd, client, name = key.split("/", 2)
        updates[f"{rnd}/{client}"][name] = value.float()
    print("| update | mean abs A | mean abs B | A kept | B kept | cos(update A, A): median over tensors |")
    print("|---|---|---|---|---|---|")
    for who, tensors in sorted(updates.items()):
        a = torch.cat([v.flatten() for k, v in tensors.items() if "lora_A" in k])
        b = torch.cat([v.flatten() for k, v in tensors.items() if "lora_B" in k])
        flat = torch.cat([a, b]).abs()
        thr = flat.topk(max(1, int(fraction * flat.numel()))).values[-1]
        cos = [
            torch.nn.functional.cosine_similarity(v.flatten(), params[f"lora/{k}"].flatten().float(), dim=0)
            for k, v in tensors.items()
            if "lora_A" in k and f"lora/{k}" in params
        ]
        med = f"{torch.stack(cos).median():.3f}" if cos else "–"
        print(
            f"| {who} | {a.abs().mean():.2e} | {b.abs().mean():.2e} | "
            f"{(a.abs() >= thr).float().mean():.3f} | {(b.abs() >= thr).float().mean():.3f} | {med} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.03)
