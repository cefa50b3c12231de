from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil

import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, codecs
from fedsqueeze.codecs import registry

RATE_CODECS = [n for n in codecs.available() if codecs.codec_class(n).rate_option == "rate"]
DENSITY_CODECS = [
    n for n in codecs.available() if "density" in {f.name for f in dataclasses.fields(codecs.codec_class(n))}
]
BAD_RATES = (math.inf, math.nan, 0, -1, "1", True)
BAD_DENSITIES = (math.inf, math.nan, 0, -1, 1.5, "0.1", True)


def test_public_api_all() -> None:
    for name in fedsqueeze.__all__:
        assert hasattr(fedsqueeze, name), name
    for name in ("UpdateSpec", "decode", "ErrorFeedback", "PayloadError"):
        assert name in fedsqueeze.__all__


def test_available_names_map_back_through_their_ids() -> None:
    names = codecs.available()
    assert {"identity", "fp16", "bf16"} <= set(names)
    for n in names:
        assert codecs.by_id(codecs.codec_class(n).codec_id).name == n


@pytest.mark.parametrize(
    ("name", "cid", "why"),
    [
        ("topk", 250, "collides"),
        ("fresh_one", 1, "collides"),
        ("Bad-Name", 251, "lower-case"),
        ("ok", 0, "1..255"),
    ],
)
def test_register_refuses_a_taken_id_or_name_and_bad_spellings(name: str, cid: int, why: str) -> None:
    # register() is what keeps ids unique; a plugin that reuses one (or the name) is stopped at import time.
    cls = type("Probe", (codecs.codec_class("identity"),), {"name": name, "codec_id": cid})
    with pytest.raises(fedsqueeze.UsageError, match=why):
        registry.register(cls)
    assert codecs.by_id(cid) is not cls
    assert name not in codecs.available() or codecs.codec_class(name) is not cls


def test_every_codec_works_with_defaults() -> None:
    u = {"a": torch.randn(64, 8), "b": torch.randn(8, 64)}
    spec = fedsqueeze.UpdateSpec.from_tensors(u)
    ref = {k: 0.5 * v + 0.1 for k, v in u.items()}  # what a predictive codec predicts from
    for n in codecs.available():
        if codecs.codec_class(n).needs_trained_model:
            continue  # cannot encode without a trained model (its own tests)
        codec = codecs.get(n)
        extra = {"reference": ref} if codec.uses_reference else {}
        blob = codec.encode(u, seed=1, **extra)
        out = fedsqueeze.decode(blob, spec, **extra)
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


def test_the_builtin_list_names_exactly_the_modules_that_register_codecs() -> None:
    for name in ("fedsqueeze.codecs", "fedsqueeze.cg_fedllm"):
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            importlib.import_module(info.name)  # a codec module missing from the lists registers here
    listed = {f"fedsqueeze.codecs.{m}" for m in registry.BUILTIN} | set(registry.PLUGINS)
    registering = {codecs.codec_class(n).__module__ for n in codecs.available()}
    assert {m for m in registering if m.startswith("fedsqueeze.")} == listed
    assert {codecs.codec_class(n).__module__ for n in ("cg_fedllm", "cg_fedllm_q")} == set(registry.PLUGINS)


def test_every_rate_codec_is_listed() -> None:
    expected = {
        "topk",
        "randk",
        "seedproj",
        "qsgd",
        "powersgd",
        "compeft",
        "flm_topk",
        "fed_cvlc",
        "wf_ecq",
        "cg_fedllm_q",
    }
    assert expected <= set(RATE_CODECS)
    assert {"topk", "randk", "seedproj", "compeft", "flm_topk", "fed_cvlc", "wf_ecq"} <= set(DENSITY_CODECS)


@pytest.mark.parametrize("bad", BAD_RATES, ids=repr)
@pytest.mark.parametrize("name", RATE_CODECS)
def test_every_rate_codec_refuses_a_bad_rate_with_the_shared_message(name: str, bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        codecs.get(name, rate=bad)
    assert str(exc.value) == f"{name}: rate must be positive bits per parameter or None, got {bad!r}"


@pytest.mark.parametrize("bad", BAD_DENSITIES, ids=repr)
@pytest.mark.parametrize("name", DENSITY_CODECS)
def test_every_density_codec_refuses_a_bad_density_with_the_shared_message(name: str, bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        codecs.get(name, density=bad)
    assert str(exc.value) == f"{name}: density must be in (0, 1], got {bad!r}"


def test_trained_model_flags_say_which_codecs_use_or_need_a_model() -> None:
    flags = {
        n: (codecs.codec_class(n).uses_trained_model, codecs.codec_class(n).needs_trained_model)
        for n in codecs.available()
    }
    assert flags.pop("cg_fedllm") == (True, True)
    assert flags.pop("cg_fedllm_q") == (True, False)
    assert set(flags.values()) == {(False, False)}
    u = {"a": torch.randn(64, 8)}
    with pytest.raises(ConfigError, match="cg_fedllm needs a trained autoencoder"):
        codecs.get("cg_fedllm").encode(u)
    blob = codecs.get("cg_fedllm_q").encode(u)  # the fallback transform: no model needed
    assert fedsqueeze.decode(blob, fedsqueeze.UpdateSpec.from_tensors(u))["a"].shape == (64, 8)
