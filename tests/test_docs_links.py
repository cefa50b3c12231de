"""The repository's documentation stands alone: no citation of files outside it, and no dead links.

Checks every tracked file (``git ls-files``): none cites the research folder beside the checkout, every
relative markdown link in a tracked ``.md`` file resolves, and every ``docs/….md`` path named in a tracked
markdown, Python or TOML file (docstrings, comments, config notes) exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# The research notes live outside the repository; the needles are joined here so this file names no path
# outside it either, and needs no exemption from its own check.
SHARED = b"shared"
OUTSIDE = (b"../" + SHARED, SHARED + b"/docs/")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md\b")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MENTION_SUFFIXES = (".md", ".py", ".toml", ".txt", ".cfg")


def tracked_files() -> list[str]:
    """Paths of the tracked files, relative to the repository root (skips outside a git checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    return [p for p in out.decode("utf-8").split("\0") if p and (ROOT / p).is_file()]


def broken_links(text: str, base: Path) -> list[str]:
    """Relative link targets of markdown ``text`` that do not exist below ``base`` (code is ignored)."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    bad = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (base / path).exists():
            bad.append(target)
    return bad


def missing_docs_paths(text: str, root: Path) -> list[str]:
    """``docs/….md`` paths named in ``text`` that do not exist below ``root``."""
    return sorted({m for m in DOCS_PATH.findall(text) if not (root / m).is_file()})


def test_the_checkers_find_what_they_should(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("x")
    text = (
        "[ok](docs/real.md) [ok](docs/real.md#section) [web](https://example.org/a.md) [anchor](#top)\n"
        "[dead](docs/gone.md) ![dead image](img/none.png)\n"
        "`[not a link](nowhere.md)`\n```\n[also code](nowhere.md)\n```\n"
    )
    assert broken_links(text, tmp_path) == ["docs/gone.md", "img/none.png"]
    named = "see ``docs/real.md`` and docs/gone.md, not mydocs/x.md or ../docs/y.md"
    assert missing_docs_paths(named, tmp_path) == ["docs/gone.md"]


def test_no_tracked_file_cites_the_research_folder() -> None:
    hits = []
    for rel in tracked_files():
        data = (ROOT / rel).read_bytes()
        for i, line in enumerate(data.splitlines(), 1):
            if any(needle in line for needle in OUTSIDE):
                hits.append(f"{rel}:{i}")
    assert hits == [], f"files citing a folder outside the repository: {hits}"


def test_relative_markdown_links_resolve() -> None:
    bad = []
    for rel in tracked_files():
        if rel.endswith(".md"):
            path = ROOT / rel
            bad += [f"{rel}: {t}" for t in broken_links(path.read_text(encoding="utf-8"), path.parent)]
    assert bad == [], f"dead links: {bad}"


def test_docs_paths_named_in_docs_docstrings_and_configs_exist() -> None:
    bad = []
    for rel in tracked_files():
        if rel == THIS or not rel.endswith(MENTION_SUFFIXES):
            continue
        text = (ROOT / rel).read_text(encoding="utf-8", errors="replace")
        bad += [f"{rel}: {m}" for m in missing_docs_paths(text, ROOT)]
    assert bad == [], f"docs/ paths that do not exist: {bad}"


def test_the_method_notes_are_in_the_repository() -> None:
    for name in ("flm-topk.md", "cg-fedllm.md", "offline-assets.md"):
        assert (ROOT / "docs" / name).is_file(), name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/offline-assets.md" in readme and "docs/flm-topk.md" in readme
