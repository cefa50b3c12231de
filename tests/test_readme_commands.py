"""The commands shown in README.md and docs/*.md parse as written, and the run configs they name resolve;
the README's Python example runs verbatim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fedsqueeze.cli import build_parser
from fedsqueeze.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, plus indented blocks (4 spaces) as shell."""
    out = [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
    rest = _FENCE.sub("", text)
    indented = re.findall(r"(?:^    \S.*\n)+", rest, re.M)
    return out + [("", "\n".join(line[4:] for line in b.splitlines())) for b in indented]


def commands(path: Path) -> list[str]:
    """Every ``fedsqueeze ...`` command line of ``path``'s code blocks (continuations joined)."""
    found = []
    for lang, body in _blocks(path.read_text(encoding="utf-8")):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if re.match(r"^(\.venv/bin/)?fedsqueeze\s", line):
                found.append(line.removesuffix("&").strip())  # `... &`: started in the background
    return found


CASES = [(p.relative_to(ROOT).as_posix(), c) for p in DOCS for c in commands(p)]


def test_the_readme_shows_commands():
    readme = [c for doc, c in CASES if doc == "README.md"]
    assert len(readme) >= 15 and any("--resume" in c for c in readme)


@pytest.mark.parametrize(("doc", "command"), CASES)
def test_command_parses_and_its_config_resolves(doc, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")
    if argv[0] == "run" or argv[:2] in (["flower", "simulate"], ["flower", "run"]):
        if getattr(args, "resume", False) and args.config is None:
            return  # continues a run of its own config (see tests/test_config_run.py)
        if args.config is not None and args.config.isupper():
            return  # a placeholder (CONFIG) for the reader's own file
        load_config(args.config, args.overrides)


def test_readme_python_examples_run_verbatim():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    codes = [body for lang, body in _blocks(text) if lang == "python"]
    assert codes, "the README has no python example"
    for code in codes:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # the README's own code
        decoded = namespace.get("decoded", namespace.get("restored"))
        assert decoded is not None and decoded.keys() == namespace["update"].keys()
