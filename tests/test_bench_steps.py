"""`fedsqueeze bench steps`: step times per LoRA placement, with and without the layer cache."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.cli import main

TINY = [
    "--set", "model.name=tiny-llama", "--set", "model.num_layers=4", "--set", "model.classifier=verbalizer",
    "--set", "data.max_train_examples=60", "--set", "data.test_examples=8", "--set", "train.batch_size=4",
]  # fmt: skip


def test_rows_for_each_placement_and_cache_setting(tmp_path, capsys):
    out = tmp_path / "steps.json"
    assert main(["bench", "steps", *TINY, "--lora-layers", "all,2", "--steps", "2", "--no-cache-too",
                 "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["lora_layers"], r["cache"]) for r in rows] == [(None, False), (2, True), (2, False)]
    assert rows[0]["lora_numel"] == 2 * rows[1]["lora_numel"] == 2 * rows[2]["lora_numel"]
    assert all(r["s_per_step"] > 0 and r["first_s_per_step"] > 0 and r["batch_size"] == 4 for r in rows)
    text = capsys.readouterr().out
    assert "top 2" in text and "all" in text


def test_a_bad_placement_is_one_line(capsys):
    assert main(["bench", "steps", *TINY, "--lora-layers", "all,zero"]) != 0
    err = capsys.readouterr().err
    assert "--lora-layers takes 'all' or positive integers" in err and "Traceback" not in err


@pytest.mark.parametrize("placement", ["9"])
def test_more_layers_than_the_model_has(placement, capsys):
    assert main(["bench", "steps", *TINY, "--lora-layers", placement, "--steps", "1"]) != 0
    assert "model.lora_layers = 9 but the model has only 4 layers" in capsys.readouterr().err
