from __future__ import annotations

import torch

import fedsqueeze
from fedsqueeze import ErrorFeedback, UpdateSpec
from fedsqueeze.codecs import get


def test_residual_invariant_exact_over_rounds() -> None:
    g = torch.Generator().manual_seed(0)
    spec = UpdateSpec.from_shapes({"a": (32, 4), "b": (4, 32)})
    ef = ErrorFeedback(get("bf16"))
    carried = torch.zeros(spec.numel, dtype=torch.float64)
    for r in range(4):
        u = {k: torch.randn(*s, generator=g) for k, s in spec.entries}
        p = spec.flatten(u, torch.float64) + carried
        blob = ef.encode(u, seed=r)
        dec = fedsqueeze.decode(blob, spec)
        assert ef.residual is not None
        assert torch.equal(spec.flatten(dec, torch.float64) + ef.residual, p)
        carried = ef.residual.clone()


def test_state_dict_round_trip_and_disabled() -> None:
    spec = UpdateSpec.from_shapes({"a": (10,)})
    u = {"a": torch.linspace(-1, 1, 10)}
    ef = ErrorFeedback(get("fp16"))
    ef.encode(u)
    other = ErrorFeedback(get("fp16"))
    other.load_state_dict(ef.state_dict())
    assert torch.equal(other.residual, ef.residual) and other.spec == spec
    assert ef.encode(u, seed=3) == other.encode(u, seed=3)
    off = ErrorFeedback(get("fp16"), enabled=False)
    off.encode(u)
    assert off.residual is None and off.residual_norm == 0.0
