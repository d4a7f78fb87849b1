"""Write a notebook from a plain-Python source with `# %%` cell markers (markdown: `# %% [markdown]`).

Notebooks are committed without outputs; their source of truth is the .ipynb itself, this script
only helps write one: `python tools/make_notebook.py notebooks/src/01_world.py notebooks/01_world.ipynb`.
A cell whose first line is `# parameters` gets papermill's `parameters` tag.
"""

import sys

import nbformat


def cells_from(text: str) -> list:
    cells, kind, buf = [], None, []

    def flush():
        if kind is None:
            return
        src = "\n".join(buf).strip("\n")
        if kind == "markdown":
            src = "\n".join(
                line[2:] if line.startswith("# ") else line.lstrip("#") for line in src.splitlines()
            )
            cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if src.startswith("# parameters"):
                cell.metadata["tags"] = ["parameters"]
            cells.append(cell)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, buf = ("markdown" if "[markdown]" in line else "code"), []
        else:
            buf.append(line)
    flush()
    return cells


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    nb = nbformat.v4.new_notebook()
    nb.cells = cells_from(open(src).read())
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, dst)
