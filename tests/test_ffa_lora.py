"""model.lora_train = "b" (FFA-LoRA): every LoRA A frozen at its seeded initialisation, only B trained."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze.cli import main as cli_main
from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl.final import FINAL_ADAPTER, save_final
from fedsqueeze.models.workload import build_workload

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BERT = ModelConfig(
    name="tiny-bert", lora_r=4, lora_alpha=8.0, lora_dropout=0.0, max_length=16, lora_train="b"
)
LLAMA = ModelConfig(
    name="tiny-llama",
    num_layers=4,
    lora_layers=2,
    lora_r=4,
    lora_dropout=0.0,
    max_length=40,
    classifier="verbalizer",
    lora_train="b",
)
DATA = DataConfig(dataset="rotten_tomatoes", num_clients=2, max_train_examples=48, test_examples=8)
TRAIN = LocalTrainConfig(lr=1e-2, max_steps=3, batch_size=8, logit_adjust=0.0)


@pytest.fixture(scope="module")
def ffa():
    return build_workload(BERT, DATA, seed=3)


@pytest.fixture(scope="module")
def both():
    return build_workload(dataclasses.replace(BERT, lora_train="both"), DATA, seed=3)


def _model_a(wl) -> dict[str, torch.Tensor]:
    """The LoRA A tensors the workload's model holds now, by stable name."""
    from fedsqueeze.models.lora import stable_name

    return {
        stable_name(n): p.detach().cpu().clone() for n, p in wl.model.named_parameters() if ".lora_A." in n
    }


def _factors(lora: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """``(A name, B name)`` of each adapted layer, A from ``frozen`` or ``lora``."""
    names = [k for k in (*frozen, *lora) if ".lora_A." in k]
    return [(a, a.replace(".lora_A.", ".lora_B.")) for a in names]


def test_lora_spec_holds_exactly_the_b_tensors_half_the_parameters(ffa, both):
    assert ffa.lora_spec.names and all(".lora_B." in n for n in ffa.lora_spec.names)
    assert [n for n in both.lora_spec.names if ".lora_B." in n] == list(ffa.lora_spec.names)
    assert set(ffa.frozen_lora) == {n for n in both.lora_spec.names if ".lora_A." in n}
    assert both.frozen_lora == {} and both.info["lora_frozen_numel"] == 0
    # tiny-bert's query and value are square: A (r x d) and B (d x r) have as many entries each
    assert 2 * ffa.lora_spec.numel == both.lora_spec.numel
    assert ffa.info["lora_frozen_numel"] == ffa.lora_spec.numel
    assert ffa.head_spec == both.head_spec  # the head is untouched
    lora, _ = ffa.initial_params()
    assert list(lora) == list(ffa.lora_spec.names)


def test_same_seed_gives_the_same_frozen_a_on_every_build(ffa, both):
    again = build_workload(BERT, DATA, seed=3)
    other = build_workload(BERT, DATA, seed=4)
    for k, a in ffa.frozen_lora.items():
        assert torch.equal(again.frozen_lora[k], a), k
        assert not torch.equal(other.frozen_lora[k], a), k
        # freezing changes no draw: A is the A that "both" starts from
        assert torch.equal(both.initial_params()[0][k], a), k
    for mine, theirs in zip(ffa.initial_params(), again.initial_params(), strict=True):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_training_moves_b_and_leaves_a_where_it_was(ffa):
    lora0, head0 = ffa.initial_params()
    lora, _, loss = ffa.train_client(0, lora0, head0, TRAIN, seed=1)
    assert loss == loss and set(lora) == set(lora0)
    assert any(not torch.equal(lora[k], lora0[k]) for k in lora)  # B trained
    now = _model_a(ffa)
    assert now.keys() == ffa.frozen_lora.keys()
    assert all(torch.equal(now[k], a) for k, a in ffa.frozen_lora.items())


def test_the_mean_of_b_is_exactly_the_mean_of_the_clients_adapters(ffa, both):
    """FFA-LoRA's point: with A shared, mean_i(B_i A) = (mean_i B_i) A, so FedAvg of B is exact. With A
    trained too, mean_i(B_i A_i) differs from (mean B)(mean A) by the clients' cross terms."""

    def gaps(wl):
        lora0, head0 = wl.initial_params()
        runs = [wl.train_client(c, lora0, head0, TRAIN, seed=7)[0] for c in range(2)]
        full = [{**wl.frozen_lora, **r} for r in runs]
        mean = {k: sum(r[k].double() for r in full) / len(full) for k in full[0]}
        out = []
        for a, b in _factors(runs[0], wl.frozen_lora):
            exact = sum(r[b].double() @ r[a].double() for r in full) / len(full)
            out.append(float((mean[b] @ mean[a] - exact).abs().max() / exact.abs().max()))
        return out

    ffa_gaps, both_gaps = gaps(ffa), gaps(both)
    assert max(ffa_gaps) < 1e-12  # float64 rounding only
    assert max(both_gaps) > 1e-6  # averaging A and B apart is not averaging the adapters


def test_saved_adapter_holds_the_frozen_a_and_loads_with_peft(ffa, tmp_path):
    from peft import PeftModel

    from fedsqueeze.models.loading import load_base_model, load_tokenizer
    from fedsqueeze.models.lora import stable_name

    lora0, head0 = ffa.initial_params()
    lora, head, _ = ffa.train_client(1, lora0, head0, TRAIN, seed=2)
    save_final(tmp_path, lora, head, ffa)
    folder = tmp_path / FINAL_ADAPTER
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert any(".lora_A." in k for k in saved) and any(".lora_B." in k for k in saved)

    base = load_base_model("tiny-bert", load_tokenizer("tiny-bert"), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(folder))
    params = {stable_name(n): p.detach() for n, p in loaded.named_parameters()}
    for k, a in ffa.frozen_lora.items():
        assert torch.equal(params[k], a), k
    for k, b in {**lora, **head}.items():
        assert torch.equal(params[k], b), k
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == BERT.lora_r


def test_verbalizer_with_the_layer_cache_trains_b_only(tmp_path):
    wl = build_workload(LLAMA, DATA, seed=3)
    assert wl.task.layer_cache is not None  # a frozen A changes nothing below the LoRA layers
    assert all(".lora_B." in n for n in wl.lora_spec.names) and wl.head_spec.numel == 0
    lora0, head0 = wl.initial_params()
    lora, _, _ = wl.train_client(0, lora0, head0, TRAIN, seed=1)
    assert any(not torch.equal(lora[k], lora0[k]) for k in lora)
    assert all(torch.equal(_model_a(wl)[k], a) for k, a in wl.frozen_lora.items())
    assert wl.evaluate(lora, {})["accuracy"] >= 0


def test_config_key_defaults_to_both_and_is_checked():
    assert ModelConfig().lora_train == "both"
    with pytest.raises(ConfigError, match="model.lora_train") as err:
        ModelConfig(lora_train="a")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="toy") as err:
        ModelConfig(name="toy", lora_train="b")
    assert "\n" not in str(err.value)
    assert RunConfig(model=BERT).model.lora_train == "b"


def _cli_run(out, *sets: str) -> dict:
    argv = ["run", "smoke", "--set", "codec.name=identity", "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert cli_main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_cli_run_sends_about_half_the_uplink(tmp_path):
    """Two rounds of the smoke preset (tiny-bert) with the dense identity uplink: the LoRA part of every
    upload is B alone, half the parameters; the dense head is the same both ways."""
    default = _cli_run(tmp_path / "both")
    ffa = _cli_run(tmp_path / "ffa", "model.lora_train=b")
    assert ffa["lora_numel"] * 2 == default["lora_numel"] and ffa["head_numel"] == default["head_numel"]
    ratio = ffa["total_uplink_bytes"] / default["total_uplink_bytes"]
    assert 0.5 <= ratio < 0.56, ratio  # half of LoRA, plus the unchanged head and frame headers
    rows = [json.loads(line) for line in (tmp_path / "ffa" / "metrics.jsonl").read_text().splitlines()]
    base = [json.loads(line) for line in (tmp_path / "both" / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(rows, base, strict=True):
        assert mine["uplink_head_bytes"] == theirs["uplink_head_bytes"]
        assert 0.5 <= mine["uplink_lora_bytes"] / theirs["uplink_lora_bytes"] < 0.51
    assert ffa["total_downlink_bytes"] < 0.56 * default["total_downlink_bytes"]
    adapter = load_file(str(tmp_path / "ffa" / FINAL_ADAPTER / "adapter_model.safetensors"))
    assert sum(".lora_A." in k for k in adapter) == sum(".lora_B." in k for k in adapter) > 0
