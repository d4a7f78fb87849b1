"""study.render: executed notebooks to HTML pages, once, in one process."""

from __future__ import annotations

import os

import nbformat
import pytest

from study.io import ArtifactError
from study.render import page_of, render, stale_pages


def _notebook(path, text):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(text)]
    nbformat.write(nb, path)


def test_each_executed_notebook_gets_its_page_once_and_again_only_when_newer(tmp_path):
    _notebook(tmp_path / "02_rm_s0.ipynb", "the single reward model")
    _notebook(tmp_path / "08_report.ipynb", "renders its own page")
    assert [p.name for p in render(tmp_path)] == ["02_rm_s0.html"]
    page = (tmp_path / "02_rm_s0.html").read_text()
    assert "the single reward model" in page and "<title>02_rm_s0</title>" in page
    assert not (tmp_path / "08_report.html").exists()
    assert render(tmp_path) == []  # up to date: nothing rendered again
    nb = tmp_path / "02_rm_s0.ipynb"
    _notebook(nb, "retrained")
    page = tmp_path / "02_rm_s0.html"
    os.utime(nb, (page.stat().st_mtime + 5, page.stat().st_mtime + 5))
    assert stale_pages(tmp_path) == [nb]
    render(tmp_path)
    assert "retrained" in page.read_text()


def test_an_unreadable_notebook_is_named_and_leaves_no_page(tmp_path):
    (tmp_path / "03_ppo_s0.ipynb").write_text('{"cells": [')
    with pytest.raises(ArtifactError, match=r"03_ppo_s0\.ipynb: not a readable executed notebook"):
        render(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "03_ppo_s0.ipynb"]


def test_a_page_is_named_after_its_notebook_unless_its_stage_renders_it():
    assert page_of("03_optimise_single_s0.ipynb") == "03_optimise_single_s0.html"
    assert page_of("08_report.ipynb") == "index.html"
    assert page_of("13_open_questions.ipynb") == "open_questions.html"
