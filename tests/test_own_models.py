"""Your own model: ``model.name`` as a local Hugging Face model directory (or a hub id), ``model.kind``,
``model.dtype`` and ``model.target_modules = "all-linear"``, on tiny randomly initialised Llama-, Qwen2- and
BERT-shaped models saved with ``save_pretrained`` beside the real offline tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

import fedsqueeze.models.loading as loading
from fedsqueeze.cli import main as cli_main
from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig, RunConfig, is_causal, load_config
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.loading import load_tokenizer
from fedsqueeze.models.registry import available, check_name, find, resolve_kind
from fedsqueeze.models.workload import build_workload

DATA = DataConfig(dataset="rotten_tomatoes", num_clients=2, max_train_examples=24, test_examples=8)
STEP = LocalTrainConfig(max_steps=1, batch_size=4)
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BF16_OK = loading._matmul_error(torch.bfloat16, torch.device("cpu")) is None


def _save(path, model, tok):
    model.save_pretrained(path)
    if tok is not None:
        tok.save_pretrained(path)
    return str(path)


def _causal_dir(tmp_path_factory, family):
    import transformers

    tok = load_tokenizer("smollm2-135m")
    cfg = getattr(transformers, f"{family}Config")(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(cfg)
    return _save(tmp_path_factory.mktemp(family.lower()), model, tok)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _causal_dir(tmp_path_factory, "Llama")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return _causal_dir(tmp_path_factory, "Qwen2")


def _bert(tok):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return BertModel(cfg)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    tok = load_tokenizer("minilm")
    return _save(tmp_path_factory.mktemp("bert"), _bert(tok), tok)


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text
    return text


def lora_modules(wl) -> set[str]:
    return {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in wl.lora_spec.names}


# -- the registry --------------------------------------------------------------------------------------------
def test_the_built_in_models_are_registry_entries():
    assert available() == ["minilm", "smollm2-135m", "tiny-bert", "tiny-llama"]
    assert {n: find(n).kind for n in available()} == {
        "minilm": "encoder",
        "smollm2-135m": "causal-lm",
        "tiny-bert": "encoder",
        "tiny-llama": "causal-lm",
    }
    assert find("tiny-llama").targets == ("q_proj", "v_proj") and find("minilm").head == "classifier"
    assert ModelConfig(name="toy").name == "toy" and not is_causal(ModelConfig(name="toy"))


# -- kind ----------------------------------------------------------------------------------------------------
def test_kind_auto_reads_the_architectures(llama_dir, qwen_dir, bert_dir):
    assert resolve_kind(llama_dir) == resolve_kind(qwen_dir) == "causal-lm"
    assert resolve_kind(bert_dir) == "encoder"
    assert is_causal(ModelConfig(name=llama_dir)) and not is_causal(ModelConfig(name=bert_dir))
    assert is_causal(ModelConfig(name=bert_dir, kind="causal-lm"))  # an explicit kind wins for a directory
    assert resolve_kind("smollm2-135m") == "causal-lm" and resolve_kind("minilm", "encoder") == "encoder"


def test_a_directory_round_trips_through_the_config_as_a_string(llama_dir):
    cfg = load_config("default", [f"model.name={llama_dir}", "model.classifier=verbalizer"])
    assert cfg.model.name == llama_dir and cfg.to_dict()["model"]["name"] == llama_dir
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- building workloads by path ------------------------------------------------------------------------------
def test_a_llama_directory_works_with_the_verbalizer(llama_dir):
    wl = build_workload(
        ModelConfig(name=llama_dir, lora_r=4, max_length=40, classifier="verbalizer"), DATA, seed=1
    )
    assert type(wl.model.base_model.model).__name__ == "LlamaForCausalLM"
    assert wl.head_spec.numel == 0 and lora_modules(wl) == {"q_proj", "v_proj"}  # PEFT's Llama default
    lora, head, loss = wl.train_client(0, *wl.initial_params(), STEP, seed=0)
    assert loss == loss and any(not torch.equal(lora[k], v) for k, v in wl.initial_params()[0].items())
    assert 0.0 <= wl.evaluate(lora, head)["accuracy"] <= 1.0


def test_a_qwen2_directory_classifies_with_a_score_head(qwen_dir):
    wl = build_workload(ModelConfig(name=qwen_dir, lora_r=4, max_length=24), DATA, seed=1)
    assert type(wl.model.base_model.model).__name__ == "Qwen2ForSequenceClassification"
    assert wl.head_spec.names == ("score.weight",) and lora_modules(wl) == {"q_proj", "v_proj"}
    assert 0.0 <= wl.evaluate(*wl.initial_params())["accuracy"] <= 1.0


def test_a_qwen2_directory_does_gsm8k(qwen_dir):
    data = DataConfig(
        dataset="gsm8k", num_clients=2, max_train_examples=8, test_examples=2, gen_max_new_tokens=4
    )
    wl = build_workload(ModelConfig(name=qwen_dir, lora_r=2, max_length=48), data, seed=0)
    assert wl.metric_name == "exact_match" and wl.head_spec.numel == 0


def test_a_bert_directory_classifies_with_a_classifier_head(bert_dir):
    wl = build_workload(ModelConfig(name=bert_dir, lora_r=4, max_length=24), DATA, seed=1)
    assert type(wl.model.base_model.model).__name__ == "BertForSequenceClassification"
    assert wl.head_spec.names == ("classifier.weight", "classifier.bias")
    assert lora_modules(wl) == {"query", "value"}
    a = build_workload(ModelConfig(name=bert_dir, lora_r=4, max_length=24), DATA, seed=1)
    assert all(torch.equal(a.initial_params()[0][k], v) for k, v in wl.initial_params()[0].items())


# -- all-linear ----------------------------------------------------------------------------------------------
def test_all_linear_targets_every_linear_layer_but_the_heads(llama_dir, bert_dir):
    cfg = load_config("default", ["model.target_modules=all-linear"])
    assert cfg.model.target_modules == ("all-linear",)
    assert ModelConfig(target_modules="all-linear").target_modules == ("all-linear",)
    wl = build_workload(
        ModelConfig(
            name=llama_dir, lora_r=2, max_length=40, classifier="verbalizer", target_modules="all-linear"
        ),
        DATA,
        seed=0,
    )
    assert lora_modules(wl) == set(LLAMA_LINEAR)  # not lm_head
    assert len(wl.lora_spec.names) == 2 * len(LLAMA_LINEAR) * 2
    enc = build_workload(ModelConfig(name=bert_dir, lora_r=2, target_modules="all-linear"), DATA, seed=0)
    assert lora_modules(enc) == {"query", "key", "value", "dense"}
    assert enc.head_spec.names == ("classifier.weight", "classifier.bias")
    tiny = build_workload(
        ModelConfig(name="tiny-bert", lora_r=2, target_modules=("all-linear",)), DATA, seed=0
    )
    assert lora_modules(tiny) == {"query", "key", "value", "dense"}


# -- dtype ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not BF16_OK, reason="torch cannot run a bfloat16 matmul on this CPU")
@pytest.mark.parametrize("which", ["llama", "bert"])
def test_bfloat16_base_with_float32_lora_and_head(which, llama_dir, bert_dir):
    if which == "llama":
        model = ModelConfig(
            name=llama_dir, lora_r=4, max_length=40, classifier="verbalizer", dtype="bfloat16"
        )
    else:
        model = ModelConfig(name=bert_dir, lora_r=4, max_length=24, dtype="bfloat16")
    wl = build_workload(model, DATA, seed=0)
    frozen = {p.dtype for p in wl.model.parameters() if not p.requires_grad and p.is_floating_point()}
    trained = {p.dtype for p in wl.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    lora, head, loss = wl.train_client(0, *wl.initial_params(), STEP, seed=0)
    assert loss == loss and all(v.dtype == torch.float32 for v in [*lora.values(), *head.values()])
    assert 0.0 <= wl.evaluate(lora, head)["accuracy"] <= 1.0


def test_float32_is_the_default_and_keeps_builtins_float32():
    assert ModelConfig().dtype == "float32" and ModelConfig().kind == "auto"
    wl = build_workload(ModelConfig(name="tiny-bert", lora_r=2), DATA, seed=0)
    assert {p.dtype for p in wl.model.parameters()} == {torch.float32}


def test_a_dtype_the_cpu_cannot_multiply_is_a_one_line_error(monkeypatch, bert_dir):
    monkeypatch.setattr(loading, "_matmul_error", lambda dtype, device: "no bf16 kernel")
    with pytest.raises(ConfigError, match=r"model.dtype = 'bfloat16'.*cpu.*float32") as err:
        build_workload(ModelConfig(name=bert_dir, dtype="bfloat16"), DATA, seed=0)
    one_line(err)
    loading.check_dtype("float32")  # float32 needs no probe


# -- errors --------------------------------------------------------------------------------------------------
def test_bad_names_are_one_line_config_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDSQUEEZE_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="no such directory") as err:
        ModelConfig(name=str(tmp_path / "missing"))
    one_line(err)
    with pytest.raises(ConfigError, match="without config.json") as err:
        ModelConfig(name=str(tmp_path))
    one_line(err)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file") as err:
        ModelConfig(name=str(tmp_path / "weights.bin"))
    one_line(err)
    for hub_id in ("someone/some-model", "gpt2"):
        with pytest.raises(ConfigError, match="FEDSQUEEZE_OFFLINE=0") as err:
            ModelConfig(name=hub_id)
        one_line(err)
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"model": {"name": 3}})


def test_hub_ids_pass_with_the_hub_on(monkeypatch):
    monkeypatch.setenv("FEDSQUEEZE_OFFLINE", "0")
    cfg = load_config("default", ["model.name=someone/some-model"])
    assert cfg.model.name == "someone/some-model"
    check_name("gpt2")
    with pytest.raises(ConfigError, match="no such directory"):
        check_name("./not/here")


def test_bad_kinds_targets_and_dtypes_are_one_line_config_errors(bert_dir):
    cases = [
        (dict(name="minilm", kind="causal-lm", classifier="verbalizer"), "built-in encoder"),
        (dict(name=bert_dir, classifier="verbalizer"), "needs a causal LM"),
        (dict(kind="decoder"), "choose one of auto, causal-lm, encoder"),
        (dict(dtype="int8"), "choose one of float32, bfloat16, float16"),
        (dict(target_modules=("all-linear", "query")), "stands alone"),
        (dict(target_modules=()), "must be module names"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ConfigError, match=needle) as err:
            ModelConfig(**kwargs)
        one_line(err)


def test_build_time_errors_are_one_line(llama_dir, bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a causal LM") as err:
        build_workload(ModelConfig(name=bert_dir), DataConfig(dataset="gsm8k", test_examples=4), seed=0)
    one_line(err)
    with pytest.raises(ConfigError, match="built-in encoder") as err:
        build_workload(ModelConfig(name="tiny-bert", kind="causal-lm"), DATA, seed=0)
    one_line(err)
    no_tok = _save(tmp_path / "no-tokenizer", _bert(load_tokenizer("minilm")), None)
    with pytest.raises(ConfigError, match="no tokenizer") as err:
        build_workload(ModelConfig(name=no_tok), DATA, seed=0)
    one_line(err)


def test_a_missing_target_module_lists_the_linear_modules(llama_dir, bert_dir):
    with pytest.raises(ConfigError, match="has no linear module 'nope_proj'") as err:
        build_workload(
            ModelConfig(
                name=llama_dir, max_length=40, classifier="verbalizer", target_modules=("nope_proj",)
            ),
            DATA,
            seed=0,
        )
    listed = one_line(err).split("its linear modules are ")[1].split(" (or")[0].split(", ")
    assert listed == [*LLAMA_LINEAR, "lm_head"]  # short names, each once
    with pytest.raises(ConfigError, match=r"modules are query, key, value, dense, classifier") as err:
        build_workload(ModelConfig(name=bert_dir, target_modules=("q_proj", "v_proj")), DATA, seed=0)
    one_line(err)


def test_the_cli_reports_a_missing_directory_in_one_line(capsys, tmp_path):
    rc = cli_main(["run", "--set", f"model.name={tmp_path / 'nope'}", "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("fedsqueeze: error: model.name = ") and "no such directory" in line


# -- whole runs through the CLI ------------------------------------------------------------------------------
SMALL = [
    "fl.rounds=2",
    "train.max_steps=2",
    "data.max_train_examples=40",
    "data.test_examples=8",
    "data.num_clients=2",
    "fl.clients_per_round=2",
    "model.lora_r=4",
]


def _cli_run(out, *overrides):
    argv = ["run", "--out", str(out), "--no-progress"]
    for item in [*SMALL, *overrides]:
        argv += ["--set", item]
    assert cli_main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if "round" in r][-1] == 2
    assert (out / "final_adapter" / "adapter_config.json").is_file()


def _same_lora(peft_model, out):
    """The adapter PEFT loads holds the run's final LoRA tensors."""
    from safetensors.torch import load_file

    from fedsqueeze.models.lora import stable_name

    saved = {
        k[len("lora/") :]: v
        for k, v in load_file(str(out / "final_params.safetensors")).items()
        if k[:5] == "lora/"
    }
    params = {stable_name(n): p for n, p in peft_model.named_parameters()}
    assert saved and all(torch.equal(params[k].detach(), v) for k, v in saved.items())


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_cli_run_on_a_llama_directory_with_the_verbalizer(tmp_path, llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "llama"
    _cli_run(out, f"model.name={llama_dir}", "model.classifier=verbalizer", "model.max_length=40")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), out / "final_adapter")
    _same_lora(model, out)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_cli_run_on_a_bert_directory_with_the_default_head(tmp_path, bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "bert"
    _cli_run(out, f"model.name={bert_dir}")
    base = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, out / "final_adapter")
    _same_lora(model, out)
    from safetensors.torch import load_file

    head = load_file(str(out / "final_params.safetensors"))["head/classifier.weight"]
    assert torch.equal(model.base_model.model.classifier.modules_to_save["default"].weight.detach(), head)
