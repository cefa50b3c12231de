"""A missing optional dependency gives one line naming the ``fedsqueeze[...]`` extra to install."""

from __future__ import annotations

import argparse
import re
import sys

import pytest

from fedsqueeze import FedsqueezeError, MissingExtraError, cli
from fedsqueeze._extras import EXTRAS, require


def _block(monkeypatch, *modules: str) -> None:
    """Make ``modules`` unimportable, as if not installed (``None`` in ``sys.modules``)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _one_line(extra: str, purpose: str, module: str) -> str:
    install = f"pip install 'fedsqueeze[{extra}]'"
    return f"fedsqueeze[{extra}] is needed for {purpose} ({module} is not installed): {install}"


def test_require_names_the_extra(monkeypatch):
    _block(monkeypatch, "matplotlib", "matplotlib.figure")  # an earlier test may have imported both
    with pytest.raises(MissingExtraError) as info:
        require("matplotlib.figure", "plots", "the plot")
    assert str(info.value) == _one_line("plots", "the plot", "matplotlib")
    assert isinstance(info.value, FedsqueezeError) and isinstance(info.value, ImportError)
    assert require("json", "cli", "x").__name__ == "json"


def test_require_keeps_a_broken_install_visible(tmp_path, monkeypatch):
    # The package is there but one of its own dependencies is not: that is not a missing extra.
    (tmp_path / "half_installed_pkg").mkdir()
    (tmp_path / "half_installed_pkg" / "__init__.py").write_text("import no_such_module_zzz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("half_installed_pkg", "llm", "x")
    assert not isinstance(info.value, MissingExtraError) and info.value.name == "no_such_module_zzz"
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        require("json", "nope", "x")


def test_every_extra_is_declared_in_pyproject():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    assert set(EXTRAS) | {"all"} == set(declared)
    assert declared["all"] == [f"fedsqueeze[{','.join(sorted(EXTRAS))}]"]
    for extra, modules in EXTRAS.items():  # each declared package is one require() knows about
        names = {re.split(r"[\[<>=;]", req)[0] for req in declared[extra]}
        assert names <= set(modules), extra


def test_llm_loaders_need_the_llm_extra(monkeypatch):
    from fedsqueeze.models import loading

    _block(monkeypatch, "transformers")
    with pytest.raises(MissingExtraError, match=r"^fedsqueeze\[llm\] is needed .*transformers is not inst"):
        loading.load_tokenizer("minilm")
    monkeypatch.undo()
    _block(monkeypatch, "gguf")
    with pytest.raises(MissingExtraError, match=r"smollm2-135m.*gguf is not installed.*'fedsqueeze\[llm\]'$"):
        loading.require_llm("smollm2-135m")
    loading.require_llm("minilm")  # MiniLM reads no GGUF file (a check: nothing is imported)


def test_progress_and_plots_name_their_extras(monkeypatch, tmp_path):
    from fedsqueeze.fl import report

    _block(monkeypatch, "rich", "matplotlib")
    with pytest.raises(MissingExtraError, match=r"^fedsqueeze\[cli\]"):
        report.Progress(3, 0, enabled=True)
    report.Progress(3, 0, enabled=False).close()  # no bar asked for, nothing needed
    with pytest.raises(MissingExtraError, match=r"^fedsqueeze\[plots\]"):
        report.plot_metric_vs_uplink([], tmp_path / "a.png", title="t")


def test_cli_says_which_extra_in_one_line(monkeypatch, tmp_path, capsys):
    _block(monkeypatch, "matplotlib")
    out = tmp_path / "run"
    assert cli.main(["run", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedsqueeze: error: " + _one_line("plots", "`fedsqueeze run`", "matplotlib")]
    assert not out.exists()  # refused before anything was loaded or written
    _block(monkeypatch, "flwr")
    assert cli.main(["flower", "simulate", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fedsqueeze: error: " + _one_line("flower", "`fedsqueeze flower simulate`", "flwr")
    ]
    _block(monkeypatch, "rich")
    assert cli.main(["codecs"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fedsqueeze: error: " + _one_line("cli", "the fedsqueeze command", "rich")
    ]


def test_bench_rd_needs_no_plots_with_no_plot(monkeypatch):
    _block(monkeypatch, "matplotlib")
    cli.check_extras(argparse.Namespace(_command=("bench", "rd"), no_plot=True))
    with pytest.raises(MissingExtraError, match=r"fedsqueeze bench rd"):
        cli.check_extras(argparse.Namespace(_command=("bench", "rd"), no_plot=False))
    cli.check_extras(argparse.Namespace(_command=("bench", "speed")))  # codecs only: the core
