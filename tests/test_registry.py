from __future__ import annotations

import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, codecs


def test_public_api_all() -> None:
    for name in fedsqueeze.__all__:
        assert hasattr(fedsqueeze, name), name
    for name in ("UpdateSpec", "decode", "ErrorFeedback", "PayloadError"):
        assert name in fedsqueeze.__all__


def test_available_and_ids_unique() -> None:
    names = codecs.available()
    assert {"identity", "fp16", "bf16"} <= set(names)
    ids = [codecs.codec_class(n).codec_id for n in names]
    assert len(set(ids)) == len(ids)
    for n in names:
        assert codecs.by_id(codecs.codec_class(n).codec_id).name == n


def test_every_codec_works_with_defaults() -> None:
    u = {"a": torch.randn(64, 8), "b": torch.randn(8, 64)}
    spec = fedsqueeze.UpdateSpec.from_tensors(u)
    for n in codecs.available():
        if n.startswith("cg_fedllm"):
            continue  # learned codecs need a trained model (their own tests)
        codec = codecs.get(n)
        blob = codec.encode(u, seed=1)
        out = fedsqueeze.decode(blob, spec)
        assert set(out) == set(u), n
        assert codec.summary and isinstance(codec.summary, str)


def test_get_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown codec 'nope'; available: .*identity"):
        codecs.get("nope")
    with pytest.raises(ConfigError, match="no option.*bogus"):
        codecs.get("identity", bogus=1)


def test_paper_budget_formula() -> None:
    # docs/flm-topk.md §2: RoBERTa-large 140, LLaMA-3.2-1B 152, LLaMA-2-7B 782 packets
    assert codecs.paper_packets(1_572_864) == 140
    assert codecs.paper_packets(1_703_936) == 152
    assert codecs.paper_packets(8_388_608) == 782
    assert codecs.budget_bits(1000, rate=2.0) == 2000
    assert codecs.budget_bits(10, rate=0.1) == 8 * 32 + 8  # never below a header plus one byte
    assert codecs.budget_bits(1_572_864) == 140 * 12_000
