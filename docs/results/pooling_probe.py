"""Why MiniLM classifies from the mean-pooled tokens: linear probes and short central training runs.

    .venv/bin/python docs/results/pooling_probe.py probe            # linear probes, ~1 min on 2 cores
    .venv/bin/python docs/results/pooling_probe.py central mean 5e-3 # 4 blocks of 20 central Adam steps

``probe``: logistic regression (L-BFGS, standardized features) on frozen all-MiniLM-L6-v2 features of 3,000
rotten_tomatoes snippets, tested on 500 others: [CLS] state, masked token mean, BERT pooler output.
``central POOLING LR``: one IID client holding the whole training pool, trained with the engine's own
``train_client`` in blocks of 20 steps (bs 16, max_length 32), accuracy on 500 held-out examples after each.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch


def probe() -> None:
    from transformers import AutoModel

    from fedsqueeze.data.sources import load_rotten_tomatoes
    from fedsqueeze.models.loading import load_tokenizer, minilm_dir
    from fedsqueeze.models.pooling import masked_mean

    torch.manual_seed(0)
    ds = load_rotten_tomatoes()
    perm = np.random.default_rng(0).permutation(len(ds.texts))
    tr, te = perm[:3000], perm[-500:]
    tok, model = load_tokenizer("minilm"), AutoModel.from_pretrained(minilm_dir()).eval()

    def feats(idx: np.ndarray, length: int) -> list[torch.Tensor]:
        cls, mean, pool = [], [], []
        for s in range(0, len(idx), 100):
            enc = tok(
                [ds.texts[i] for i in idx[s : s + 100]],
                truncation=True,
                max_length=length,
                padding=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                out = model(**enc)
            cls.append(out.last_hidden_state[:, 0])
            mean.append(masked_mean(out.last_hidden_state, enc["attention_mask"]))
            pool.append(out.pooler_output)
        return [torch.cat(x) for x in (cls, mean, pool)]

    ytr = torch.tensor([ds.labels[i] for i in tr])
    yte = torch.tensor([ds.labels[i] for i in te])
    for length in (32, 64):
        for name, a, b in zip(("cls", "mean", "pooler"), feats(tr, length), feats(te, length), strict=True):
            print(f"max_length {length} {name:6s} probe accuracy {_fit_probe(a, b, ytr, yte):.3f}")


def _fit_probe(a: torch.Tensor, b: torch.Tensor, ytr: torch.Tensor, yte: torch.Tensor) -> float:
    mu, sd = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    w = torch.zeros(a.shape[1], 2, requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, ytr) + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(((b @ w + bias).argmax(1) == yte).float().mean())


def central(pooling: str, lr: float) -> None:
    from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig
    from fedsqueeze.models.workload import build_workload

    w = build_workload(
        ModelConfig(name="minilm", max_length=32, pooling=pooling),
        DataConfig(num_clients=1, partition="iid", test_examples=500),
        seed=0,
    )
    lora, head = w.initial_params()
    print(pooling, lr, "steps 0 accuracy", w.evaluate(lora, head)["accuracy"], flush=True)
    t0 = time.time()
    for block in range(4):
        cfg = LocalTrainConfig(lr=lr, batch_size=16, max_steps=20)
        lora, head, loss = w.train_client(0, lora, head, cfg, seed=block)
        acc = w.evaluate(lora, head)["accuracy"]
        print(
            f"{pooling} lr {lr} steps {(block + 1) * 20} loss {loss:.3f} accuracy {acc:.3f} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        probe()
    elif sys.argv[1:2] == ["central"] and len(sys.argv) == 4:
        central(sys.argv[2], float(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
