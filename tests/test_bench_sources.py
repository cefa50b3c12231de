"""Benchmark sources: synthetic families, the block structure and captured safetensors files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fedsqueeze import ConfigError
from fedsqueeze.bench.sources import BLOCK_SIZE, BLOCKS, block_stats, load_source, make_source


@pytest.mark.parametrize("name", ["gaussian", "laplace", "student-t"])
def test_iid_sources_have_unit_variance_and_are_seeded(name):
    t = make_source(name, 1 << 16, seed=3)
    assert list(t) == ["u"] and t["u"].dtype == torch.float32 and t["u"].numel() == 1 << 16
    assert t["u"].shape == (256, 256)  # matrix-shaped so per-matrix codecs see a matrix
    assert float(t["u"].square().mean()) == pytest.approx(1.0, abs=0.1 if name == "student-t" else 0.03)
    assert torch.equal(t["u"], make_source(name, 1 << 16, seed=3)["u"])
    assert not torch.equal(t["u"], make_source(name, 1 << 16, seed=4)["u"])


def test_laplace_and_t_have_their_shapes():
    lap = make_source("laplace", 1 << 16, 0)["u"].double()
    # (E|x|)^2 / E x^2 is 1/2 for Laplace, 2/π for the Gaussian
    assert float(lap.abs().mean() ** 2 / lap.square().mean()) == pytest.approx(0.5, abs=0.02)
    t = make_source("student-t", 1 << 16, 0)["u"].double()
    assert float((t.abs() > 5).double().mean()) > 1e-3  # heavy tails (Gaussian: ~6e-7)


def test_blocks_default_and_given_d():
    src = load_source("blocks", seed=1)
    assert len(src.tensors) == BLOCKS and src.d == BLOCKS * BLOCK_SIZE == 1_572_864
    var, n = src.blocks()
    assert n.tolist() == [BLOCK_SIZE] * BLOCKS
    sig = np.sqrt(var)
    assert math.log10(sig.max() / sig.min()) == pytest.approx(1.5, abs=0.1)  # 1.5 decades
    small = load_source("blocks", d=96 * 50 + 7, seed=1)
    assert small.d == 96 * 50 and all(t.numel() == 50 for t in small.tensors.values())
    assert np.all(small.entropy_ratios() == 1.0)
    with pytest.raises(ConfigError):
        load_source("blocks", d=10)


def test_block_stats_is_mean_square():
    var, n = block_stats({"a": torch.full((4,), 2.0), "b": torch.tensor([1.0, -1.0])})
    np.testing.assert_allclose(var, [4.0, 1.0])
    assert n.tolist() == [4, 2]


def test_file_source_picks_updates(tmp_path):
    caps = {}
    for r in (0, 2):
        for c in (3, 1):
            caps[f"r{r}/c{c}/lora_A"] = torch.full((2, 3), float(10 * r + c))
            caps[f"r{r}/c{c}/lora_B"] = torch.full((3, 2), float(10 * r + c)).to(torch.bfloat16)
    path = tmp_path / "caps.safetensors"
    save_file(caps, str(path))
    first = make_source(f"file:{path}")
    assert list(first) == ["lora_A", "lora_B"] and float(first["lora_A"][0, 0]) == 1.0  # round 0, client 1
    assert first["lora_B"].dtype == torch.float32
    picked = load_source(f"file:{path}#r2/c3")
    assert float(picked.tensors["lora_B"][0, 0]) == 23.0 and picked.family is None
    assert picked.blocks()[1].tolist() == [6, 6]
    with pytest.raises(ConfigError, match="no update"):
        make_source(f"file:{path}#r9/c9")


def test_file_source_plain_and_client_round_layouts(tmp_path):
    plain = tmp_path / "one.safetensors"
    save_file({"b": torch.ones(3), "a": torch.zeros(2)}, str(plain))
    assert list(make_source(f"file:{plain}")) == ["a", "b"]
    other = tmp_path / "cr.safetensors"
    save_file(
        {
            "client2/round1/x": torch.ones(2),
            "client0/round1/x": torch.zeros(2),
            "client5/round0/x": torch.full((2,), 5.0),
        },
        str(other),
    )
    assert float(make_source(f"file:{other}")["x"][0]) == 5.0  # lowest round first
    assert float(make_source(f"file:{other}#client2/round1")["x"][0]) == 1.0
    with pytest.raises(ConfigError):
        make_source(f"file:{tmp_path / 'missing.safetensors'}")
    with pytest.raises(ConfigError):
        make_source("uniform")
