"""The ``Parameters`` section of NumPy-style docstrings (``fedsqueeze codecs NAME``, docs/config.md)."""

from __future__ import annotations

import inspect
import re

__all__ = ["parameters", "plain"]

_UNDERLINE = re.compile(r"^-{3,}$")
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """reST to Markdown-ish text: ``x`` → `x`, :class:`~a.b.C` → `C`, :func:`a.b` → `a.b`."""

    def role(m: re.Match[str]) -> str:
        target = m.group(1)
        short = m.group(0).split("`", 1)[1].startswith("~")
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    return _ROLE.sub(role, text).replace("``", "`")


def parameters(doc: str | None) -> dict[str, str]:
    """``{name: description}`` of the docstring's ``Parameters`` section, in order.

    An entry is a line at the section's indentation (``name`` or ``name : type``; ``a, b`` gives both names
    the same text) followed by its more indented description; the description's lines are joined with
    spaces. A docstring without the section gives ``{}``.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    start = next(
        (
            i + 2
            for i, line in enumerate(lines[:-1])
            if line.strip() == "Parameters" and _UNDERLINE.match(lines[i + 1].strip())
        ),
        None,
    )
    if start is None:
        return out
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for name in names:
            out[name] = " ".join(text).strip()

    for i in range(start, len(lines)):
        line = lines[i]
        if line.strip() and i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1].strip()):
            break  # the next section
        if line and not line[0].isspace():
            flush()
            head = line.split(" : ", 1)[0]
            names, text = [n.strip() for n in head.split(",") if n.strip()], []
        elif line.strip():
            text.append(line.strip())
        elif names and text:  # a blank line inside a description keeps its paragraphs apart
            text.append("")
    flush()
    return {k: re.sub(r"\s{2,}", " ", v) for k, v in out.items()}
