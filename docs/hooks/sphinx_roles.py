"""Griffe extension for the API pages: docstrings as the package writes them, rendered as meant.

Two habits of the package's NumPy-style docstrings that the NumPy parser would misread:

- **Sphinx roles** (``:class:`~.health.RunHealth```, ``:func:`fedsqueeze.decode```), which Markdown shows as
  written. The role is dropped and the target shown as code: the last component with a leading ``~`` (as
  Sphinx shows it), else the name without leading dots. Not every target has a page on the site, so no link
  is made (a link to a missing target would fail the strict build).
- **A closing paragraph after a section** (``Parameters``, ``Raises``, ...), at the section's indentation.
  The parser takes its first word for one more parameter (a warning, which fails the strict build) or
  exception. Such a paragraph gets a ``Notes`` heading, which is what it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`<]+?)(?:\s*<([^`>]+)>)?`"
)


def plain_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its target."""

    def one(m: re.Match[str]) -> str:
        tilde, target, explicit = m.group(1), m.group(2).strip(), m.group(3)
        if explicit:  # :class:`title <target>`: the title is what Sphinx shows
            return f"`{target}`"
        shown = target.rsplit(".", 1)[-1] if tilde else target.lstrip(".")
        return f"`{shown}`"

    return _ROLE.sub(one, text)


# Sections whose entries start with a name (or a type) at the section's indentation.
_ITEMIZED = {
    "parameters", "other parameters", "returns", "yields", "receives", "raises", "warns", "attributes",
}  # fmt: skip


def _is_prose(line: str) -> bool:
    """Whether a line at a section's indentation is a sentence rather than an entry (``name : type``,
    ``a, b``, ``dict[str, Tensor]``, ``**options``, ``PayloadError``)."""
    head = line.split(" : ", 1)[0].strip()
    head = re.sub(r"\[[^\]]*\]", "", head)
    head = re.sub(r"\s*(,|\|)\s*", ",", head)
    return head.startswith("`") or " " in head


def closing_notes(text: str) -> str:
    """``text`` with a ``Notes`` heading before a paragraph that follows an itemized section."""
    lines = text.split("\n")
    out: list[str] = []
    section = None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and set(nxt.strip()) == {"-"} and not line.startswith(" "):
            section = line.strip().lower()
        elif (
            section in _ITEMIZED
            and line.strip()
            and not line.startswith(" ")
            and i > 0
            and not lines[i - 1].strip()
            and _is_prose(line)
        ):
            out += ["Notes", "-----"]
            section = "notes"
        out.append(line)
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package (:func:`plain_roles`, :func:`closing_notes`)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = closing_notes(plain_roles(obj.docstring.value))
