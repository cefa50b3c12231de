"""Zero-shot label-word logits of SmolLM2-135M-Instruct on 40 held-out rotten_tomatoes examples, two prompts.

    FEDSQUEEZE_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python \
        docs/results/smollm2-verbalizer/prompt_probe.py

``plain``: the verbalizer's prompt (``Review: <text>\\nIs this review positive or negative? Answer:``, label
words `` negative`` / `` positive``). ``chat``: the same question in the model's chat template, asked to
answer with one word (label words ``Negative`` / ``Positive``). For each: argmax accuracy, the share predicted
positive, the mean logit difference (positive - negative) per true class, and the accuracy when thresholding
that difference at its median (a ranking signal that a bias shift would expose). One unpadded forward each.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fedsqueeze.data.partition import train_test_split
from fedsqueeze.data.sources import load_dataset
from fedsqueeze.models.loading import load_base_model, load_tokenizer
from fedsqueeze.models.workload import configure_threads


def main() -> None:
    configure_threads()
    tok = load_tokenizer("smollm2-135m")
    model = load_base_model("smollm2-135m", tok, num_labels=None)
    raw = load_dataset("rotten_tomatoes")
    _, test = train_test_split(len(raw), 200, seed=0, max_train=None)  # the measure.py held-out set
    test = test[:40]
    y = np.asarray(raw.labels)[test]

    def ids(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    def chat(text: str) -> list[int]:
        user = "Review: " + text + "\nIs this review positive or negative? Answer with one word."
        return ids(tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                           tokenize=False))  # fmt: skip

    variants = {
        "plain": (lambda t: ids("Review: " + t) + ids("\nIs this review positive or negative? Answer:"),
                  [ids(" negative")[0], ids(" positive")[0]]),
        "chat": (chat, [ids("Negative")[0], ids("Positive")[0]]),
    }  # fmt: skip
    for name, (encode, label_ids) in variants.items():
        c0, diff = time.process_time(), []
        with torch.no_grad():
            for i in test:
                logits = model(input_ids=torch.tensor([encode(raw.texts[i])]), logits_to_keep=1).logits[0, -1]
                diff.append(float(logits[label_ids[1]] - logits[label_ids[0]]))
        d = np.asarray(diff)
        pred = (d > 0).astype(int)
        print(
            f"{name}: argmax acc {np.mean(pred == y):.3f}, predicted positive {pred.mean():.3f}, "
            f"mean diff | negative {d[y == 0].mean():+.3f} | positive {d[y == 1].mean():+.3f}, "
            f"median-threshold acc {np.mean((d > np.median(d)).astype(int) == y):.3f}, "
            f"cpu {time.process_time() - c0:.1f} s"
        )


if __name__ == "__main__":
    main()
