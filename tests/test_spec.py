from __future__ import annotations

import pytest
import torch

from fedsqueeze import ConfigError, UpdateSpec


def _update() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "l0.A": torch.randn(4, 8, generator=g),
        "l0.B": torch.randn(8, 4, generator=g),
        "b": torch.randn(3, generator=g),
    }


def test_flatten_unflatten_round_trip() -> None:
    u = _update()
    spec = UpdateSpec.from_tensors(u)
    assert spec.numel == 32 + 32 + 3
    assert spec.offsets == (0, 32, 64, 67)
    flat = spec.flatten(u)
    back = spec.unflatten(flat)
    assert list(back) == list(u)
    for k in u:
        assert torch.equal(back[k], u[k])


def test_digest_depends_on_order_names_and_shapes() -> None:
    a = UpdateSpec.from_shapes({"x": (2, 3), "y": (4,)})
    assert a.digest == UpdateSpec.from_shapes({"x": (2, 3), "y": (4,)}).digest
    assert len(a.digest) == 8
    assert a.digest != UpdateSpec.from_shapes({"y": (4,), "x": (2, 3)}).digest
    assert a.digest != UpdateSpec.from_shapes({"x": (3, 2), "y": (4,)}).digest
    assert a.digest != UpdateSpec.from_shapes({"x": (2, 3), "z": (4,)}).digest


def test_check_names_mismatch_and_shape() -> None:
    spec = UpdateSpec.from_shapes({"x": (2,), "y": (3,)})
    with pytest.raises(ConfigError, match="shape"):
        spec.flatten({"x": torch.zeros(2), "y": torch.zeros(4)})
    with pytest.raises(ConfigError, match="missing"):
        spec.flatten({"x": torch.zeros(2)})


def test_invalid_specs_rejected() -> None:
    with pytest.raises(ConfigError):
        UpdateSpec((("a", (1,)), ("a", (2,))))
    with pytest.raises(ConfigError):
        UpdateSpec((("a", (-1,)),))


def test_json_round_trip() -> None:
    spec = UpdateSpec.from_shapes({"x": (2, 3), "y": ()})
    assert UpdateSpec.from_json(spec.to_json()) == spec
    assert spec.numel == 7
