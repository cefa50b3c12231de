"""The budget-filling table of docs/benchmarks.md: wf_ecq and FLM-TopK on updates far from every GGD.

Sources: ``0.005 · sign(randn(74498))`` (constant magnitudes) and MiniLM LoRA deltas (r 8, q/v, head
trained too) after 1, 2 and 5 AdamW steps (lr 1e-3, batch 8 of 32 random tokens) from the fresh adapter,
where B moves by about ``±lr`` everywhere. Prints rel. error and the share of the budget used.

    python docs/results/fill_table.py
"""

from __future__ import annotations

import torch

import fedsqueeze
from fedsqueeze import UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.models.loading import load_base_model, load_tokenizer
from fedsqueeze.models.lora import apply_lora, read_tensors, split_trainable

RATES = (0.1, 0.3, 0.5, 1.0, 2.0)
CODECS = ("wf_ecq", "flm_topk")


def minilm_delta(steps: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tok = load_tokenizer("minilm")
    model = load_base_model("minilm", tok, num_labels=2)
    peft = apply_lora(model, "minilm", r=8, alpha=16.0, dropout=0.0, target_modules=None, classification=True)
    lora, head = split_trainable(peft)
    before = read_tensors(lora)
    opt = torch.optim.AdamW([*lora.values(), *head.values()], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    peft.train()
    for _ in range(steps):
        ids = torch.randint(100, 2000, (8, 32), generator=g)
        y = torch.randint(0, 2, (8,), generator=g)
        loss = peft(input_ids=ids, attention_mask=torch.ones_like(ids), labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = read_tensors(lora)
    return {k: before[k] - after[k] for k in before}


def rel_error(u: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> float:
    num = sum(float(((u[k] - v[k]).double() ** 2).sum()) for k in u)
    return num / sum(float((u[k].double() ** 2).sum()) for k in u)


def cell(codec: str, u: dict[str, torch.Tensor], rate: float) -> str:
    spec = UpdateSpec.from_tensors(u)
    try:
        blob = get(codec, rate=rate).encode(u, seed=0)
    except fedsqueeze.ConfigError:
        return "refused"
    used = 8 * len(blob) / (rate * spec.numel)
    return f"{rel_error(u, fedsqueeze.decode(blob, spec)):.3f} ({used:.0%})"


def main() -> None:
    g = torch.Generator().manual_seed(0)
    sources = {"0.005·sign, d = 74,498": {"w": 0.005 * torch.sign(torch.randn(74498, generator=g))}}
    for steps in (1, 2, 5):
        sources[f"MiniLM LoRA, {steps} AdamW step{'s' * (steps > 1)}"] = minilm_delta(steps)
    print("rel. error (share of the budget used) per target rate:\n")
    print("| source | codec | " + " | ".join(f"{r:g} bpp" for r in RATES) + " |")
    print("|---|---|" + "---|" * len(RATES))
    for name, u in sources.items():
        for codec in CODECS:
            print(f"| {name} | {codec} | " + " | ".join(cell(codec, u, r) for r in RATES) + " |")
        spec = UpdateSpec.from_tensors(u)
        blob = get("signsgd").encode(u, seed=0)
        bpp = 8 * len(blob) / spec.numel
        print(
            f"| {name} | signsgd (fixed {bpp:.2f} bpp) | {rel_error(u, fedsqueeze.decode(blob, spec)):.3f} |"
        )


if __name__ == "__main__":
    main()
