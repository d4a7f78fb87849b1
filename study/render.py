"""Every stage's executed notebook rendered to HTML, in one process: `python -m study.render`.

A stage writes its executed notebook, `reports/<name>.ipynb`, as a DVC output. The HTML page beside
it is a view of that file, not a result, so no stage pays a converter's start-up for it: the
pipeline runner (`python -m study.pipeline`) renders the pages when it ends, and after a plain
`dvc repro` or `dvc checkout` this command does. A page is rendered again only when its notebook
is newer than it. The report and the open questions render their own pages, without code
(`reports/index.html`, `reports/open_questions.html`, their stages' outputs), and are not rendered
here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.io import ArtifactError, atomic_path

# executed notebooks whose stage renders their page itself, without code: the page's name
OWN_PAGES = {"08_report.ipynb": "index.html", "13_open_questions.ipynb": "open_questions.html"}


def page_of(notebook: str) -> str:
    """The HTML page under reports/ of an executed notebook's file name."""
    return OWN_PAGES.get(notebook, str(Path(notebook).with_suffix(".html")))


def stale_pages(reports: Path | str = "reports") -> list[Path]:
    """The executed notebooks under `reports` whose HTML page is missing or older, by name."""
    out = []
    for nb in sorted(Path(reports).glob("*.ipynb")):
        page = nb.with_suffix(".html")
        if nb.name not in OWN_PAGES and (
            not page.exists() or page.stat().st_mtime < nb.stat().st_mtime
        ):
            out.append(nb)
    return out


def render(reports: Path | str = "reports") -> list[Path]:
    """Render every stale page (`stale_pages`) atomically; return the pages written. A notebook
    that cannot be read is an error naming it, and no page is left half-written."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    written = []
    for nb in stale_pages(reports):
        try:
            node = nbformat.read(nb, as_version=4)
            # the page's title is the notebook's name, as `jupyter nbconvert` gives it
            body, _ = exporter.from_notebook_node(node, resources={"metadata": {"name": nb.stem}})
        except Exception as e:  # nbformat's and nbconvert's errors share no base class
            raise ArtifactError(
                f"{nb}: not a readable executed notebook ({type(e).__name__}: {str(e)[:200]}); "
                "rerun its stage with `dvc repro --force <stage>`"
            ) from e
        with atomic_path(nb.with_suffix(".html")) as tmp:
            tmp.write_text(body, encoding="utf-8")
        written.append(nb.with_suffix(".html"))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="?", default="reports", type=Path)
    args = p.parse_args(argv)
    try:
        pages = render(args.reports)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"rendered {len(pages)} page(s) under {args.reports}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
