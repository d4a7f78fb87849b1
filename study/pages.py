"""Pages with generated blocks: the body between `<!-- generated: NAME -->` and
`<!-- /generated: NAME -->` is rewritten from the committed results (`study.readme` makes the
bodies), and the rest of the page is left as written."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

PATTERN = r"(<!-- generated: {name} -->)\n(.*?)\n?(<!-- /generated: {name} -->)"


def rewrite(text: str, new: dict[str, str], missing: Callable[[str], None] | None = None) -> str:
    """`text` with the body of every `<!-- generated: NAME -->` block in `new` replaced."""
    for name, body in new.items():
        pattern = re.compile(PATTERN.format(name=re.escape(name)), re.S)
        if not pattern.search(text):
            if missing:
                missing(name)
            continue
        text = pattern.sub(lambda m, b=body: f"{m.group(1)}\n{b}\n{m.group(3)}", text)
    return text


def generated(text: str, name: str) -> str | None:
    """The body of the block `name` in `text` (None when the text has no such block)."""
    m = re.search(PATTERN.format(name=re.escape(name)), text, re.S)
    return m.group(2) if m else None


# the pages whose generated blocks this module writes: the README (the front page) and the
# results in full (docs/results.md); each block lives on one of them
PAGES = ("README.md", "docs/results.md")


def write_pages(root: str | Path, made: dict[str, str]) -> dict[str, list[str]]:
    """Rewrite the generated blocks `made` ({name: body}) on every page under `root`; {page: the
    blocks it holds}. A block that no page holds is an error naming it (before any page is
    written)."""
    root = Path(root)
    texts = {page: (root / page).read_text() for page in PAGES}
    held = {
        page: [n for n in made if generated(text, n) is not None] for page, text in texts.items()
    }
    homeless = [n for n in made if not any(n in names for names in held.values())]
    if homeless:
        raise ValueError(f"no page of {PAGES} holds the generated block(s) {homeless}: add "
                         f"<!-- generated: NAME --> <!-- /generated: NAME --> to one of them")  # fmt: skip
    for page, text in texts.items():
        (root / page).write_text(rewrite(text, {n: made[n] for n in held[page]}))
    return held
