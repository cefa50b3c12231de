"""One codec contract for every codec: ``reference`` and ``models`` are in the base signatures (no flags).

Plain codecs ignore both; the capability flags (``uses_reference``, ``uses_trained_model``) are information
only. Also: the aggregation rules live in one registry that the config reads.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

import fedsqueeze
from fedsqueeze import PayloadError, UpdateSpec
from fedsqueeze.codecs import Codec, available, codec_class, get
from fedsqueeze.config import fl as fl_config
from fedsqueeze.fl import robust
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE, pack_frame

SRC = Path(fedsqueeze.__file__).parent


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.A": torch.randn(8, 48, generator=g), "a.B": torch.randn(48, 8, generator=g)}


def test_predictive_by_name_encodes_without_a_reference_and_round_trips() -> None:
    u = _update()
    spec = UpdateSpec.from_tensors(u)
    blob = get("predictive").encode(u)  # no reference: codes against zero, i.e. the inner codec's frame
    assert blob == get("topk").encode(u)
    assert set(fedsqueeze.decode(blob, spec)) == set(u)
    exact = get("predictive", inner="identity")
    out = fedsqueeze.decode(exact.encode(u, seed=3), spec)
    assert all(torch.equal(out[k], u[k]) for k in u)


def test_a_predictive_body_against_zero_decodes_without_a_reference() -> None:
    u = _update(1)
    spec = UpdateSpec.from_tensors(u)
    codec = get("predictive", inner="identity")
    body = codec.encode_flat(spec.flatten(u), spec, seed=0)  # the always-predictive hook, no reference
    frame = pack_frame(codec.codec_id, spec, 0, body)
    a = fedsqueeze.decode(frame, spec)
    b = fedsqueeze.decode(frame, spec, reference=spec.zeros())
    assert all(torch.equal(a[k], u[k]) and torch.equal(b[k], u[k]) for k in u)
    # a body predicted from another reference still needs that one
    other = codec.encode_flat(spec.flatten(u), spec, seed=0, reference=spec.flatten(_update(2)))
    with pytest.raises(PayloadError, match="needs the reference"):
        fedsqueeze.decode(pack_frame(codec.codec_id, spec, 0, other), spec)


@pytest.mark.parametrize("name", available())
def test_every_codec_takes_the_same_keywords(name: str) -> None:
    cls = codec_class(name)
    for method in ("encode", "encode_with_spec"):
        params = inspect.signature(getattr(cls, method)).parameters
        assert params["reference"].default is None, (name, method)
    params = inspect.signature(cls.decode_body).parameters
    assert params["reference"].default is None and params["models"].default is None, name
    if cls.needs_trained_model:
        return  # cannot encode without a trained model (its own tests)
    u = _update(3)
    spec = UpdateSpec.from_tensors(u)
    ref = {k: 0.5 * v for k, v in u.items()}
    for reference in (None, ref):
        blob = get(name).encode(u, seed=1, reference=reference)
        out = fedsqueeze.decode(blob, spec, reference=reference, models=None)
        assert set(out) == set(u), name
        body = blob[HEADER_SIZE:]
        if HEADER.unpack_from(blob)[2] == cls.codec_id:  # not a plain inner frame sent by a wrapper
            flat = cls.decode_body(body, spec, seed=1, reference=reference, models=None)
            assert torch.equal(flat, spec.flatten(out)), name


def test_no_override_type_ignores_in_the_package() -> None:
    for path in SRC.rglob("*.py"):
        assert "type: ignore[override]" not in path.read_text(encoding="utf-8"), path


def test_the_cg_fedllm_codecs_share_one_decode_body() -> None:
    base = codec_class("cg_fedllm").__mro__[1]
    assert base.__module__ == "fedsqueeze.cg_fedllm.codec_base"
    for name in ("cg_fedllm", "cg_fedllm_q"):
        cls = codec_class(name)
        assert issubclass(cls, base) and "decode_body" not in vars(cls), name
        assert cls.uses_trained_model and cls.trained_by == "tgap", name


def test_base_contract_has_the_capabilities_as_information_only() -> None:
    for flag in ("uses_reference", "uses_trained_model", "needs_trained_model"):
        assert getattr(Codec, flag) is False
    assert codec_class("predictive").uses_reference
    assert codec_class("cg_fedllm").uses_trained_model


def test_aggregations_are_one_registry_read_by_the_config() -> None:
    assert robust.AGGREGATIONS == tuple(robust.AGGREGATORS) == ("mean", "median", "trimmed_mean")
    assert fl_config.AGGREGATIONS is robust.AGGREGATIONS
    field = {f.name: f for f in dataclasses.fields(fl_config.FLConfig)}["aggregation"]
    assert field.metadata["fedsqueeze"]["choices"] == tuple(robust.AGGREGATORS)
    with pytest.raises(TypeError):
        robust.AGGREGATORS["mode"] = robust.AGGREGATORS["mean"]  # type: ignore[index]
    vecs = [torch.tensor([1.0, 5.0]), torch.tensor([3.0, -1.0]), torch.tensor([2.0, 2.0])]
    for name, rule in robust.AGGREGATORS.items():
        assert torch.equal(robust.aggregate(vecs, [1, 1, 1], name, 0.2), rule(vecs, [1, 1, 1], 0.2))
    with pytest.raises(fedsqueeze.ConfigError, match="choose one of mean, median, trimmed_mean"):
        fl_config.FLConfig(aggregation="mode")
