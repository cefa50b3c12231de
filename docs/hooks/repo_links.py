"""MkDocs hook: links from a page to files of the repository outside ``docs/``.

The pages are also read on a code host, where a link such as ``../src/fedsqueeze/wire/SPEC.md`` works.
The site holds only ``docs/``, so such a link is rewritten when the site is built:

- to the site's page that shows the same file, when there is one (:data:`SITE_PAGES`);
- else to the file on the code host when ``repo_url`` is set in ``mkdocs.yml``, else to the link's text
  (plus the path when the text does not name it).

A link to a path that does not exist in the repository is a warning, which ``mkdocs build --strict``
turns into a failure, as it does for a broken link inside ``docs/``. Code spans and fenced code are left
alone.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_links")

#: Repository files (relative to the root) that a page of the site shows, and that page (relative to docs/).
SITE_PAGES = {"src/fedsqueeze/wire/SPEC.md": "reference/wire-format.md"}

_CODE = re.compile(r"(^(```|~~~).*?^\2[^\n]*$|`[^`\n]*`)", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(\s*<?([^)\s>]+)>?\s*\)")


def _rewrite(text: str, src_uri: str, docs: Path, root: Path, repo_url: str | None) -> str:
    codes: list[str] = []

    def mask(m: re.Match[str]) -> str:
        codes.append(m.group(0))
        return f"\x00{len(codes) - 1}\x00"

    def unmask(text: str) -> str:
        return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], text)

    def one(m: re.Match[str]) -> str:
        label, target = unmask(m.group(1)), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target, re.I) or "\x00" in target:
            return m.group(0)
        path, _, frag = target.partition("#")
        resolved = (docs / posixpath.dirname(src_uri) / path).resolve()
        if resolved.is_relative_to(docs.resolve()):
            return m.group(0)  # a page or file of the site: MkDocs checks it
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
            log.warning(
                "Doc file '%s' links to '%s', which does not exist in the repository", src_uri, target
            )
            return m.group(0)
        rel = resolved.relative_to(root.resolve()).as_posix()
        if rel in SITE_PAGES:
            page = posixpath.relpath(SITE_PAGES[rel], posixpath.dirname(src_uri) or ".")
            return f"[{label}]({page}{'#' + frag if frag else ''})"
        if repo_url:
            return f"[{label}]({repo_url.rstrip('/')}/blob/main/{rel})"
        named = rel.startswith(label.strip("`").rstrip("/"))
        return label if named else f"{label} (`{rel}`)"

    # Code is masked first, so that a link inside code stays as it is and a link whose text is code works.
    return unmask(_LINK.sub(one, _CODE.sub(mask, text)))


def on_page_markdown(markdown, page, config, files):  # MkDocs' hook signature
    docs = Path(config["docs_dir"])
    return _rewrite(markdown, page.file.src_uri, docs, docs.parent, config.get("repo_url"))
