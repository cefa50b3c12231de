"""LoRA on the top layers only, and the reuse of the frozen bottom layers' output (models.layer_cache)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.functional import cross_entropy

from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.layer_cache import LayerCache
from fedsqueeze.models.workload import build_workload

MODEL = ModelConfig(
    name="tiny-llama", num_layers=4, lora_layers=2, lora_r=4, max_length=40, classifier="verbalizer"
)
DATA = DataConfig(dataset="rotten_tomatoes", num_clients=2, max_train_examples=48, test_examples=12)


@pytest.fixture(scope="module")
def wl():
    return build_workload(MODEL, DATA, seed=3)


def _perturbed(wl, seed=0):
    """The initial adapter with B made non-zero, so the top layers' LoRA changes the logits."""
    lora, head = wl.initial_params()
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in lora.items()}, head


def _with_grads(wl, batch, cache, forward):
    """``forward(task, model, batch) -> (output, loss)`` with ``cache``: the output and the LoRA gradients."""
    wl.task.layer_cache = cache
    wl.model.zero_grad(set_to_none=True)
    out, loss = forward(wl.task, wl.model, batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in wl._lora_params.items()}
    wl.model.zero_grad(set_to_none=True)
    return out.detach(), grads


def _label_logits(task, model, batch):
    logits = task.logits(model, batch)
    return logits, cross_entropy(logits, batch["labels"])


def _answer_loss(task, model, batch):
    loss = task.loss(model, batch)
    return loss, loss


def _logits_and_grads(wl, batch, cache):
    return _with_grads(wl, batch, cache, _label_logits)


def test_lora_sits_on_the_top_layers_only(wl):
    layers = {int(name.split(".layers.")[1].split(".")[0]) for name in wl.lora_spec.names}
    assert layers == {2, 3}
    assert isinstance(wl.task.layer_cache, LayerCache) and wl.task.layer_cache.boundary == 2


@pytest.mark.parametrize("train_mode", [False, True])
def test_cached_logits_and_gradients_match_the_full_model(wl, train_mode):
    cache = wl.task.layer_cache
    try:
        wl.load(*_perturbed(wl))
        wl.model.train(train_mode)
        # Rows of different lengths: left padding differs between the batch and the cached rows.
        batch = wl.task.train_batch([0, 5, 7, 11, 13])
        torch.manual_seed(0)
        ref_logits, ref_grads = _logits_and_grads(wl, batch, None)
        for _ in range(2):  # first call fills the cache, the second reads it
            torch.manual_seed(0)
            logits, grads = _logits_and_grads(wl, batch, cache)
            torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
            assert set(grads) == set(ref_grads)
            for name, g in grads.items():
                assert ref_grads[name].abs().max() > 0, name
                torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6)
        assert cache.hits >= 5 and {0, 5, 7, 11, 13} <= set(cache._states)
    finally:
        wl.model.eval()
        wl.task.layer_cache = cache


def test_cached_rows_do_not_depend_on_their_batch(wl):
    """An example cached inside one batch gives the same logits inside another (other padding)."""
    cache = wl.task.layer_cache
    wl.load(*_perturbed(wl, 1))
    with torch.no_grad():
        a = wl.task.logits(wl.model, wl.task.train_batch([3, 20]))
        b = wl.task.logits(wl.model, wl.task.train_batch([20, 1, 3]))
    torch.testing.assert_close(a[0], b[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], b[0], rtol=1e-5, atol=1e-5)
    assert cache.bytes > 0


def test_training_and_evaluation_agree_with_and_without_the_cache(wl):
    cache = wl.task.layer_cache
    lora, head = _perturbed(wl, 2)
    cfg = LocalTrainConfig(batch_size=4, max_steps=3, optimizer="adamw")
    try:
        wl.task.layer_cache = None
        ref_lora, _, ref_loss = wl.train_client(0, lora, head, cfg, seed=5)
        ref_eval = wl.evaluate(ref_lora, head)
        wl.task.layer_cache = cache
        new_lora, _, loss = wl.train_client(0, lora, head, cfg, seed=5)
        new_eval = wl.evaluate(new_lora, head)
    finally:
        wl.task.layer_cache = cache
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k in ref_lora:
        torch.testing.assert_close(new_lora[k], ref_lora[k], rtol=1e-4, atol=1e-6)
    assert new_eval["accuracy"] == ref_eval["accuracy"]
    assert new_eval["eval_loss"] == pytest.approx(ref_eval["eval_loss"], rel=1e-5)


def test_memory_bound_is_kept_and_results_do_not_change(wl):
    full = wl.task.layer_cache
    tiny = LayerCache(wl.model, full.boundary, max_bytes=1)  # no state fits: every batch is recomputed
    wl.load(*_perturbed(wl, 3))
    batch = wl.task.test_batch([0, 1, 2])
    with torch.no_grad():
        wl.task.layer_cache = tiny
        a = wl.task.logits(wl.model, batch)
        wl.task.layer_cache = full
        b = wl.task.logits(wl.model, batch)
    assert len(tiny) == 0 and tiny.bytes == 0 and tiny.misses == 3
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cache_off_and_all_layers_build_no_cache():
    off = build_workload(dataclasses.replace(MODEL, layer_cache_mb=0), DATA, seed=3)
    assert off.task.layer_cache is None and off.lora_spec.numel > 0
    every = build_workload(dataclasses.replace(MODEL, lora_layers=None), DATA, seed=3)
    assert every.task.layer_cache is None
    assert every.lora_spec.numel == 2 * off.lora_spec.numel


def test_more_lora_layers_than_the_model_has_is_a_config_error():
    with pytest.raises(ConfigError, match="model.lora_layers = 9 but the model has only 4 layers"):
        build_workload(dataclasses.replace(MODEL, lora_layers=9), DATA, seed=3)


def test_a_shared_store_serves_later_caches_and_survives_a_broken_file(wl, tmp_path):
    wl.load(*_perturbed(wl, 4))
    batch = wl.task.train_batch([2, 9, 30])
    boundary = wl.task.layer_cache.boundary
    first = LayerCache(wl.model, boundary, store=tmp_path)
    with torch.no_grad():
        wl.task.layer_cache = first
        a = wl.task.logits(wl.model, batch)
        files = sorted(first.store.rglob("*.pt"))
        assert first.misses == 3 and first.disk_hits == 0 and len(files) == 3
        files[0].write_bytes(b"not a tensor")  # a half-written file from a crashed run
        second = LayerCache(wl.model, boundary, store=tmp_path)
        assert second.store == first.store  # same weights, same boundary: same folder
        wl.task.layer_cache = second
        b = wl.task.logits(wl.model, batch)
    wl.task.layer_cache = LayerCache(wl.model, boundary)
    assert second.disk_hits == 2 and second.misses == 1  # the broken one is recomputed (and rewritten)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    other = LayerCache(wl.model, boundary - 1, store=tmp_path)
    assert other.store != first.store  # another boundary never reads these states


def test_the_store_folder_comes_from_the_environment(wl, tmp_path, monkeypatch):
    from fedsqueeze.models.layer_cache import STORE_ENV

    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    cache = LayerCache(wl.model, wl.task.layer_cache.boundary)
    assert cache.store is not None and cache.store.parent == tmp_path
    monkeypatch.delenv(STORE_ENV)
    assert LayerCache(wl.model, wl.task.layer_cache.boundary).store is None


# Causal-LM training on answer tokens (gsm8k, instruction tuning): right-padded batches, the LM head read at
# the answer tokens only.
GEN_MODEL = dataclasses.replace(MODEL, classifier="head", max_length=160)
GEN_DATA = DataConfig(dataset="gsm8k", num_clients=2, max_train_examples=24, test_examples=6)


@pytest.fixture(scope="module")
def gen_wl():
    return build_workload(GEN_MODEL, GEN_DATA, seed=3)


def _loss_and_grads(wl, batch, cache):
    return _with_grads(wl, batch, cache, _answer_loss)


@pytest.mark.parametrize("train_mode", [False, True])
def test_answer_token_loss_and_gradients_match_the_full_model(gen_wl, train_mode):
    cache = gen_wl.task.layer_cache
    assert isinstance(cache, LayerCache) and cache.boundary == 2
    try:
        gen_wl.load(*_perturbed(gen_wl))
        gen_wl.model.train(train_mode)  # LoRA dropout draws alike: the bottom layers carry no LoRA
        batch = gen_wl.task.train_batch([0, 4, 9, 17])  # right-padded rows of different lengths
        assert (batch["attention_mask"][:, -1] == 0).any()
        torch.manual_seed(0)
        ref_loss, ref_grads = _loss_and_grads(gen_wl, batch, None)
        for _ in range(2):  # first call fills the cache, the second reads it
            torch.manual_seed(0)
            loss, grads = _loss_and_grads(gen_wl, batch, cache)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            for name, g in grads.items():
                assert ref_grads[name].abs().max() > 0, name
                torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6)
        assert cache.hits >= 4
        # The same example inside another batch (other padding width) gives the same loss.
        gen_wl.model.eval()
        alone = gen_wl.task.train_batch([9])
        with torch.no_grad():
            a = gen_wl.task.loss(gen_wl.model, alone)
            gen_wl.task.layer_cache = None
            b = gen_wl.task.loss(gen_wl.model, alone)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        gen_wl.model.eval()
        gen_wl.task.layer_cache = cache


def test_heldout_answer_loss_matches_the_full_model(gen_wl):
    cache = gen_wl.task.layer_cache
    try:
        gen_wl.load(*_perturbed(gen_wl, 5))
        with torch.no_grad():
            gen_wl.task.layer_cache = None
            ref = gen_wl.task.heldout_loss(gen_wl.model)
            gen_wl.task.layer_cache = cache
            got = gen_wl.task.heldout_loss(gen_wl.model)
    finally:
        gen_wl.task.layer_cache = cache
    assert ref > 0 and got == pytest.approx(ref, rel=1e-5)
    assert any(k < 0 for k in cache._states)  # the held-out examples were cached under their own keys
