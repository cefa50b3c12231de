"""How well the previous round predicts a client's update: cosine against the previous round's mean update.

Reads ``CAPTURES`` (``fedsqueeze run --capture-updates all``: one raw LoRA update per client and round) and
prints, per round r >= 2, the range over that round's clients of cos(update, mean of round r − 1's updates),
for the whole update and for the LoRA A and B tensors apart. That mean is the reference
``fedsqueeze bench rd --predictive`` predicts from.

    python docs/results/update_cosine.py CAPTURES
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch
from safetensors.torch import load_file


def main(path: str) -> None:
    ups: dict[tuple[int, int], dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in load_file(path).items():
        rnd, client, name = key.split("/", 2)
        ups[(int(rnd[1:]), int(client[1:]))][name] = value
    names = sorted(next(iter(ups.values())))
    rounds = sorted({r for r, _ in ups})

    def flat(d: dict[str, torch.Tensor], part: str | None) -> torch.Tensor:
        return torch.cat([d[n].flatten() for n in names if part is None or part in n])

    print("| tensors | " + " | ".join(f"round {r}" for r in rounds[1:]) + " |")
    print("|---|" + "---|" * len(rounds[1:]))
    for part in (None, "lora_A", "lora_B"):
        cells = []
        for r in rounds[1:]:
            prev = torch.stack([flat(d, part) for (rr, _), d in ups.items() if rr == r - 1]).mean(0)
            cos = [
                torch.nn.functional.cosine_similarity(flat(d, part), prev, dim=0).item()
                for (rr, _), d in ups.items()
                if rr == r
            ]
            cells.append(f"{min(cos):.2f} to {max(cos):.2f}")
        print(f"| {part or 'all'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
