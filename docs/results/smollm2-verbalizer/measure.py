"""Seconds per local step and zero-shot accuracy of the SmolLM2-135M verbalizer workload (docs/results.md).

Run from the repository root (one torch thread):
    FEDSQUEEZE_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python \
        docs/results/smollm2-verbalizer/measure.py [--zero-shot N] [--steps K] > out.json

Per (num_layers, max_length): one warm-up step, then ``--steps`` timed local steps at batch 8 (Adam, LoRA
r16 on q_proj/v_proj, label-word cross-entropy), as ``train_client`` runs them. Wall and CPU seconds are
both given: on a shared machine wall time includes waiting for the CPU, process time does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig
from fedsqueeze.models.workload import build_workload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--layers", default="30,8,4")
    ap.add_argument("--lengths", default="64,128")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--zero-shot", type=int, default=200, help="held-out examples (0: skip)")
    ap.add_argument("--zero-shot-length", type=int, default=64)
    args = ap.parse_args()
    out: dict = {"dataset": args.dataset, "batch_size": 8, "steps": args.steps, "timing": []}
    warm = LocalTrainConfig(batch_size=8, max_steps=1, logit_adjust=0.0)
    timed = LocalTrainConfig(batch_size=8, max_steps=args.steps, logit_adjust=0.0)
    for layers in [int(x) for x in args.layers.split(",")]:
        for length in [int(x) for x in args.lengths.split(",")]:
            t0 = time.perf_counter()
            w = build_workload(
                ModelConfig(name="smollm2-135m", classifier="verbalizer", max_length=length,
                            num_layers=None if layers == 30 else layers),
                DataConfig(dataset=args.dataset, num_clients=1, partition="iid",
                           max_train_examples=8 * (args.steps + 1), test_examples=8),
                seed=0,
            )  # fmt: skip
            build_s = time.perf_counter() - t0
            lora, head = w.initial_params()
            shard = w.parts[0]
            widths = [w.task.train_batch(shard[i : i + 8].tolist())["input_ids"].shape[1]
                      for i in range(0, len(shard), 8)]  # fmt: skip
            w.train_client(0, lora, head, warm, seed=0)
            c0, t0 = time.process_time(), time.perf_counter()
            w.train_client(0, lora, head, timed, seed=1)
            row = {
                "num_layers": layers,
                "max_length": length,
                "wall_s_per_step": (time.perf_counter() - t0) / args.steps,
                "cpu_s_per_step": (time.process_time() - c0) / args.steps,
                "mean_batch_width": float(np.mean(widths)),
                "build_wall_s": build_s,
                "lora_numel": w.lora_spec.numel,
                "head_numel": w.head_spec.numel,
            }
            out["timing"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            del w
    if args.zero_shot:
        t0, c0 = time.perf_counter(), time.process_time()
        w = build_workload(
            ModelConfig(name="smollm2-135m", classifier="verbalizer", max_length=args.zero_shot_length),
            DataConfig(dataset=args.dataset, num_clients=1, partition="iid", max_train_examples=8,
                       test_examples=args.zero_shot),
            seed=0,
        )  # fmt: skip
        lora, head = w.initial_params()  # LoRA B = 0: the base model itself
        t1, c1 = time.perf_counter(), time.process_time()
        m = w.evaluate(lora, head)
        out["zero_shot"] = {
            **m,
            "test_examples": args.zero_shot,
            "max_length": args.zero_shot_length,
            "label_share": np.bincount(w.task.test_labels, minlength=w.task.num_classes).tolist(),
            "eval_wall_s": time.perf_counter() - t1,
            "eval_cpu_s": time.process_time() - c1,
            "build_wall_s": t1 - t0,
            "build_cpu_s": c1 - c0,
        }
        print(json.dumps(out["zero_shot"]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
