"""The same workloads and codecs on a CUDA device (skipped where torch sees no GPU)."""

from __future__ import annotations

import pytest
import torch

from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig
from fedsqueeze.models.workload import build_workload

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = DataConfig(dataset="rotten_tomatoes", num_clients=2, max_train_examples=48, test_examples=12)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_tiny_causal_lm_trains_on_cuda_with_a_float32_adapter(dtype):
    model = ModelConfig(
        name="tiny-llama", num_layers=4, lora_layers=2, lora_r=4, max_length=40, classifier="verbalizer",
        device="auto", dtype=dtype,
    )  # fmt: skip
    wl = build_workload(model, DATA, seed=0)
    assert wl.device.type == "cuda"
    assert {p.dtype for p in wl._lora_params.values()} == {torch.float32}
    lora, head = wl.initial_params()
    new, _, loss = wl.train_client(0, lora, head, LocalTrainConfig(batch_size=4, max_steps=2), seed=0)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in new.values())  # updates: CPU
    assert any(not torch.equal(new[k], lora[k]) for k in new) and loss == loss
    metrics = wl.evaluate(new, head)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_cuda_and_cpu_training_agree_in_float32():
    kwargs = dict(name="tiny-llama", num_layers=2, lora_r=4, max_length=40, classifier="verbalizer")
    cfg = LocalTrainConfig(batch_size=4, max_steps=2, optimizer="adamw")
    out = {}
    for device in ("cpu", "cuda"):
        wl = build_workload(ModelConfig(device=device, lora_dropout=0.0, **kwargs), DATA, seed=1)
        lora, head = wl.initial_params()
        out[device] = wl.train_client(1, lora, head, cfg, seed=3)[0]
    for k in out["cpu"]:
        torch.testing.assert_close(out["cuda"][k], out["cpu"][k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["topk", "flm_topk", "wf_ecq", "blockwise8", "nf4", "qsgd"])
def test_a_cuda_update_encodes_to_the_bytes_of_its_cpu_copy_and_decodes_onto_the_gpu(name):
    from fedsqueeze import UpdateSpec, codecs, decode

    gen = torch.Generator().manual_seed(0)
    cpu = {"q.lora_A": torch.randn(16, 256, generator=gen), "q.lora_B": torch.randn(256, 16, generator=gen)}
    gpu = {k: v.to("cuda") for k, v in cpu.items()}
    spec = UpdateSpec.from_tensors(cpu)
    blob = codecs.get(name).encode(gpu, seed=5)
    assert blob == codecs.get(name).encode(cpu, seed=5)
    out = decode(blob, spec, device="cuda")
    ref = decode(blob, spec)
    assert all(out[k].device.type == "cuda" and torch.equal(out[k].cpu(), ref[k]) for k in spec.names)
