"""Allocator-level peak memory (`fedsqueeze.bench.memory`): known allocations; the flm_topk / wf_ecq bound.

Deterministic allocator accounting (bytes handed out by torch's CPU allocator and numpy's data allocator), not
timing: the same code gives the same figures on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsqueeze.bench.memory import measure_peak
from fedsqueeze.bench.sources import make_source
from fedsqueeze.codecs import decode_flat, get
from fedsqueeze.spec import UpdateSpec

D = 1 << 20
REF = 4 * D
SLACK = 64 * 1024 / REF  # Python objects made by the call and the hook: far below 64 KiB


def _peak(fn, *args, **kwargs):
    out, m = measure_peak(fn, *args, ref_bytes=REF, **kwargs)
    assert m.exact
    return out, m


def test_one_float_tensor_is_one_update():
    _, m = _peak(torch.empty, D)
    assert 1.0 <= m.peak_x <= 1.0 + SLACK
    assert m.torch_peak_bytes == REF and m.end_bytes >= REF  # the result is still held


def test_numpy_and_float64_sizes():
    _, m = _peak(np.ones, D, np.float32)
    assert 1.0 <= m.peak_x <= 1.0 + SLACK and m.numpy_peak_bytes >= REF
    _, m = _peak(torch.zeros, D, dtype=torch.float64)
    assert 2.0 <= m.peak_x <= 2.0 + SLACK


def test_torch_then_numpy_on_one_timeline():
    def one_after_other():
        t = torch.ones(D)
        del t
        a = np.ones(D, np.float32)
        del a

    def both_alive():
        t = torch.ones(D)
        a = np.ones(D, np.float32)
        del t, a

    _, m = _peak(one_after_other)
    assert 1.0 <= m.peak_x <= 1.0 + SLACK  # not 2: the torch block was gone before numpy's came
    _, m = _peak(both_alive)
    assert 2.0 <= m.peak_x <= 2.0 + SLACK
    assert m.end_bytes < SLACK * REF


def test_topk_outputs_and_abs_temporary():
    x = torch.randn(D)
    k = 20_000
    _, m = _peak(torch.topk, x, k)
    out_bytes = k * (4 + 8)  # float32 values + int64 indices; the kernel's scratch is not allocator-visible
    assert out_bytes <= m.peak_bytes <= out_bytes + 64 * 1024
    _, m = _peak(lambda: torch.topk(x.abs(), k))
    assert 1.0 + out_bytes / REF <= m.peak_x <= 1.0 + out_bytes / REF + SLACK


def test_transient_inside_one_call_counts():
    def spike():
        y = np.sort(np.random.default_rng(0).random(D // 2))  # float64: 1x, and a sorted copy: 1x more
        return float(y[0])

    _, m = _peak(spike)
    assert 2.0 <= m.peak_x <= 2.0 + SLACK and m.end_bytes < SLACK * REF


@pytest.mark.parametrize("name", ["flm_topk", "wf_ecq"])
def test_codec_round_trip_peak_at_most_four_updates(name):
    u = make_source("gaussian", D, 5)
    spec = UpdateSpec.from_tensors(u)
    flat = spec.flatten(u)
    del u
    codec = get(name)
    small = flat[:8192].clone()
    sspec = UpdateSpec.from_tensors({"w": small})
    decode_flat(codec.fresh().encode_with_spec(small, sspec, seed=1), sspec)  # warm caches untraced
    frame, enc = _peak(codec.fresh().encode_with_spec, flat, spec, seed=1)
    out, dec = _peak(decode_flat, frame, spec)
    assert out.shape == (D,)
    assert enc.peak_x <= 4.0, enc
    assert dec.peak_x <= 4.0, dec
