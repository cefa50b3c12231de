"""The docs site (mkdocs.yml): it builds in strict mode, its generated pages are up to date, and what its
pages say about commands, output fields and defaults matches the code.

The build runs when MkDocs is installed (``requirements-dev.txt`` pins it, so ``make test`` has it).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from fedsqueeze.cli import build_parser
from fedsqueeze.cli.reference import cli_reference, commands
from fedsqueeze.config import CODEC_DEFAULT, DOWNLINK_DEFAULT, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The pages written for the site (the older pages at the top of docs/ are checked by test_readme_commands).
SITE_PAGES = sorted(p for sub in ("tutorials", "how-to", "reference") for p in (DOCS / sub).glob("*.md"))
SITE_PAGES += [DOCS / "index.md", DOCS / "getting-started.md"]

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs and mkdocstrings are not installed (pip install -r requirements-dev.txt)",
)


@needs_mkdocs
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "NO_MKDOCS_2_WARNING": "1"},
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert warnings == [], "\n".join(warnings)
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for anchor in ("fedsqueeze.decode", "fedsqueeze.flower.Compressed", "fedsqueeze.flower.compress_mod"):
        assert f'id="{anchor}"' in api, f"the API page does not document {anchor}"
    assert "Frame header" in (site / "reference" / "wire-format.html").read_text(encoding="utf-8")
    assert not list(site.glob("results/**/*.json")), "run files of docs/results/ leaked into the site"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def test_the_cli_reference_is_up_to_date() -> None:
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert text == cli_reference(), "regenerate: python -m fedsqueeze.cli.reference > docs/reference/cli.md"


def test_the_cli_reference_has_every_command_and_codec() -> None:
    from fedsqueeze.codecs import available

    text = cli_reference()
    names = [name for name, _ in commands()]
    assert {"fedsqueeze run", "fedsqueeze study", "fedsqueeze flower run", "fedsqueeze bench rd"} <= {*names}
    for name in names:
        assert f"## `{name}`\n" in text
    for codec in available():
        assert f"### `{codec}`\n" in text
    assert max(len(line) for line in text.split("## Codec options")[0].splitlines() if line) <= 200


# -- commands and fields named in the site's pages -------------------------------------------------------
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _commands(path: Path) -> list[str]:
    found = []
    for lang, body in _FENCE.findall(path.read_text(encoding="utf-8")):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if re.match(r"^(\.venv/bin/)?fedsqueeze\s", line):
                found.append(line.removesuffix("&").strip())
    return found


CASES = [(p.relative_to(ROOT).as_posix(), c) for p in SITE_PAGES for c in _commands(p)]


def test_the_site_pages_show_commands() -> None:
    assert len(CASES) >= 15


# Files that a page's own snippets make before its commands use them: the commands are checked in a folder
# holding stand-ins of the same names (a model directory's config.json, data files).
PAGE_FILES = {
    "docs/tutorials/own-model-and-data.md": ("my-llm/config.json", "qa.jsonl", "reviews.csv"),
}


@pytest.mark.parametrize(("doc", "command"), CASES)
def test_command_on_a_site_page_parses_and_its_config_resolves(
    doc: str, command: str, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    if doc in PAGE_FILES:
        for name in PAGE_FILES[doc]:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text('{"architectures": ["LlamaForCausalLM"]}', encoding="utf-8")
        monkeypatch.chdir(tmp_path)
    argv = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")
    if argv[0] == "run" or argv[:2] in (["flower", "simulate"], ["flower", "run"]):
        if getattr(args, "resume", False) and args.config is None:
            return  # continues a run with its own config
        load_config(args.config, args.overrides)


def _table_names(text: str, first_header: str) -> list[str]:
    """Backticked names in the first column of the Markdown tables whose first header is ``first_header``."""
    names, inside = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            cell = line.split("|")[1].strip()
            if cell == first_header:
                inside = True
            elif inside and not cell.startswith("---"):
                names += re.findall(r"`([a-z_0-9]+)`", cell)
        else:
            inside = False
    return names


def test_the_output_fields_of_the_reference_exist_in_the_code() -> None:
    text = (DOCS / "reference" / "outputs.md").read_text(encoding="utf-8")
    fields = _table_names(text, "field") + _table_names(text, "code")
    assert len(fields) > 60 and "bits_per_param_total" in fields and "residual_growth" in fields
    source = "".join(
        p.read_text(encoding="utf-8")
        for sub in ("fl", "flower")
        for p in (ROOT / "src" / "fedsqueeze" / sub).glob("*.py")
    )
    missing = sorted({f for f in fields if f'"{f}"' not in source})
    assert missing == [], f"reference/outputs.md names fields the code does not write: {missing}"


def test_the_docs_name_the_defaults_the_config_has() -> None:
    default = load_config(None)
    name, options = DOWNLINK_DEFAULT
    assert (default.downlink.name, default.downlink.options) == (name, dict(options))
    up_name, up_options = CODEC_DEFAULT
    assert (default.codec.name, default.codec.options) == (up_name, dict(up_options))
    broadcast = f"{name} delta frames at {options['rate']:g} bits per parameter"
    uplink = f"{up_name} at {up_options['rate']:g} bits per parameter"
    for doc in ("README.md", "docs/getting-started.md", "docs/default-run.md"):
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
        assert broadcast in text and uplink in text, doc
    for preset in ("smoke", "paper"):  # the pages say these two keep the dense broadcast
        assert load_config(preset).downlink.name == "identity", preset


def test_the_readme_describes_the_presets_as_the_config_has_them() -> None:
    """The README's sentences about the `default` and `paper` presets, checked against the config (the
    numbers are read from the text, so a changed default fails here until the README says so)."""
    import re

    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    d = load_config(None)
    m = re.search(
        r"`make run` fine-tunes MiniLM with LoRA on (\w+) across (\d+) IID clients "
        r"\((\d+) per round, (\d+) rounds of (\d+) local AdamW steps\)\. The classifier head trains in "
        r"round 1 only",
        text,
    )
    assert m, "the README's make-run sentence changed: update this test with it"
    assert (d.model.name, d.data.partition, d.train.optimizer, d.model.head) == (
        "minilm", "iid", "adamw", "first_round"
    )  # fmt: skip
    assert (m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5])) == (
        d.data.dataset, d.data.num_clients, d.fl.clients_per_round, d.fl.rounds, d.train.max_steps
    )  # fmt: skip
    p = load_config("paper")
    m = re.search(
        r"`paper` \(the FLM-TopK authors' setting: (\d+) clients, (\d+) per round, (\d+) rounds, (\d+) local "
        r"epochs, batch (\d+), r (\d+), p = ([\d.]+), the head trained in round 1 only\)",
        text,
    )
    assert m, "the README's paper-preset sentence changed: update this test with it"
    got = (int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), float(m[7]))
    want = (
        p.data.num_clients, p.fl.clients_per_round, p.fl.rounds, p.train.epochs, p.train.batch_size,
        p.model.lora_r, p.codec.build().options()["density"],
    )  # fmt: skip
    assert got == want and p.model.head == "first_round"


def test_the_packaged_study_grids_pin_their_downlink() -> None:
    """The pages say: every packaged grid sets the dense broadcast in `[study] set`, except downlink-default,
    whose columns each set a downlink."""
    grids = resources.files("fedsqueeze.configs").joinpath("study")
    for entry in grids.iterdir():
        if not entry.name.endswith(".toml"):
            continue
        study = tomllib.loads(entry.read_text(encoding="utf-8"))
        if "downlink.name=identity" in study["study"].get("set", []):
            continue
        assert entry.name == "downlink-default.toml", f"{entry.name} does not pin the dense broadcast"
        assert all(any(s.startswith("downlink.name=") for s in c["set"]) for c in study["codecs"])


# -- the hook that rewrites links to repository files outside docs/ --------------------------------------
def _hook():
    spec = importlib.util.spec_from_file_location("repo_links", DOCS / "hooks" / "repo_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_outside_docs_are_rewritten_and_dead_ones_warn(caplog) -> None:
    hook = _hook()
    top = (
        "[the spec](../src/fedsqueeze/wire/SPEC.md#frame-header-32-bytes) "
        "[`examples/quickstart-pytorch`](../examples/quickstart-pytorch/README.md) "
        "[the tests](../tests/conftest.py) [a page](study.md) `[code](../nowhere.md)` "
        "[gone](../examples/gone.md)"
    )
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.repo_links"):
        out = hook._rewrite(top, "flm-topk.md", DOCS, ROOT, None)
    assert out == (
        "[the spec](reference/wire-format.md#frame-header-32-bytes) `examples/quickstart-pytorch` "
        "the tests (`tests/conftest.py`) [a page](study.md) `[code](../nowhere.md)` "
        "[gone](../examples/gone.md)"
    )
    assert [r.getMessage() for r in caplog.records] == [
        "Doc file 'flm-topk.md' links to '../examples/gone.md', which does not exist in the repository"
    ]
    nested = hook._rewrite("[spec](../../src/fedsqueeze/wire/SPEC.md)", "tutorials/x.md", DOCS, ROOT, None)
    assert nested == "[spec](../reference/wire-format.md)"
    linked = hook._rewrite(
        "[ex](../examples/quickstart-pytorch/README.md)", "flower.md", DOCS, ROOT, "https://x/y"
    )
    assert linked == "[ex](https://x/y/blob/main/examples/quickstart-pytorch/README.md)"
