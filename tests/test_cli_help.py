"""Discoverability of the CLI: --version, a line per command, `codecs NAME`, defaults in help, wide help,
and `tgap --out` as a folder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import fedsqueeze
from fedsqueeze._docstring import parameters
from fedsqueeze.cli import build_parser
from fedsqueeze.cli import main as cli_main
from fedsqueeze.cli.codecs import describe_codec
from fedsqueeze.codecs import available, codec_class


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedsqueeze {fedsqueeze.__version__}"


def test_top_level_help_describes_every_command(capsys):
    text = build_parser().format_help()
    for line in ("    bench     benchmarks: rate-distortion", "    flower    the same job on Flower"):
        assert line in text
    assert "subcommands" not in text
    for cmd in ("codecs", "run", "tgap", "study"):
        row = next(line for line in text.splitlines() if line.strip().startswith(cmd + " "))
        assert len(row.split(None, 1)[1]) > 20  # a real one-line description


def test_help_uses_the_width_and_shows_defaults(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "150")
    with pytest.raises(SystemExit):
        cli_main(["tgap", "--help"])
    text = capsys.readouterr().out
    assert "--steps STEPS" in text and "Adam steps (default: 400)" in text
    assert "(default: 0.0002)" in text and "(default: paper)" in text and "(default: None)" not in text
    assert max(len(line) for line in text.splitlines()) > 80  # not wrapped at 80 columns


@pytest.mark.parametrize("name", available())
def test_codecs_name_explains_every_option(name):
    cls = codec_class(name)
    text = describe_codec(name)
    assert text.startswith(f"{name} (wire id {cls.codec_id}): {cls.summary}")
    helps = parameters(cls.__doc__)
    for key, value in cls().options().items():
        assert f"  {key} = {value!r}\n" in text
        assert helps.get(key), f"{name}.{key} has no description in the docstring's Parameters section"
    assert "(no description)" not in text


def test_codecs_cli(capsys):
    assert cli_main(["codecs", "topk"]) == 0
    out = capsys.readouterr().out
    assert "density = 0.02" in out and "Kept fraction" in out
    assert cli_main(["codecs", "nope"]) == 2
    assert "unknown codec 'nope'" in capsys.readouterr().err
    assert cli_main(["codecs", "wfecq"]) == 2
    assert "unknown codec 'wfecq'; did you mean 'wf_ecq'?" in capsys.readouterr().err


def test_codecs_name_gives_the_rate_knob_a_sweep_sets():
    assert "rate knob: rate\n" in describe_codec("wf_ecq")
    assert "rate knob: none (fixed size)" in describe_codec("nf4")
    assert "rate knob: inner_options.rate (the inner codec's)" in describe_codec("predictive")


def test_docstring_parameters_reader():
    doc = """Title.

    Parameters
    ----------
    a, b
        Shared text
        over two lines.
    c : int
        Typed.

    Returns
    -------
    x
        Not a parameter.
    """
    assert parameters(doc) == {
        "a": "Shared text over two lines.",
        "b": "Shared text over two lines.",
        "c": "Typed.",
    }
    assert parameters("No sections.") == {}


def _captures(path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for r in (1, 2):
        for c in (0, 1):
            for m in ("q_proj", "v_proj"):
                tensors[f"r{r}/c{c}/layers.0.{m}.lora_A.weight"] = torch.randn(2, 16, generator=g)
                tensors[f"r{r}/c{c}/layers.0.{m}.lora_B.weight"] = torch.randn(16, 2, generator=g)
    save_file(tensors, str(path))


def test_tgap_out_is_a_folder_with_a_deprecated_file_form(tmp_path, capsys):
    caps = tmp_path / "captures.safetensors"
    _captures(caps)
    args = ["tgap", str(caps), "--depth", "2", "--steps", "2", "--batch-size", "2", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "ae")]) == 0
    assert (tmp_path / "ae" / "ae.safetensors").is_file() and (tmp_path / "ae" / "ae.json").is_file()
    assert f"-> {tmp_path / 'ae' / 'ae.safetensors'}" in capsys.readouterr().out
    assert cli_main([*args, "--out", str(tmp_path / "old.safetensors")]) == 0
    assert (tmp_path / "old.safetensors").is_file()
    assert "a file name is deprecated; give a folder" in capsys.readouterr().err


def test_default_outputs_go_under_runs():
    parser = build_parser()
    for argv in (["bench", "rd"], ["bench", "intervals"]):
        assert parser.parse_args(argv).out.startswith("runs/"), argv


def test_make_help_lists_every_target():
    import re
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[1]
    phony = re.search(r"^\.PHONY: (.*)$", (root / "Makefile").read_text(), re.M).group(1).split()
    out = subprocess.run(["make", "-s", "help"], cwd=root, capture_output=True, text=True, check=True).stdout
    listed = {line.split()[1] for line in out.splitlines() if line.startswith("  make ")}
    assert set(phony) == listed and "bench" in listed
