"""`fedsqueeze study --aggregate-only` with nothing to aggregate: one line, non-zero exit, no tables."""

from __future__ import annotations

from pathlib import Path

from fedsqueeze.cli import main as cli_main
from support.study import write_toy_study


def test_aggregate_only_without_finished_cells_is_an_error(tmp_path: Path, capsys) -> None:
    study, out = write_toy_study(tmp_path), tmp_path / "out"
    assert cli_main(["study", str(study), "--out", str(out), "--aggregate-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsqueeze: error: --aggregate-only: no finished cell of study 'toy'")
    assert "\n" not in err and "run the study first" in err
    assert not (out / "results.md").exists() and not (out / "plots").exists()
