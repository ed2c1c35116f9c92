"""Sphinx configuration of the sb3-memory documentation (built by scripts/build_docs.sh)."""

import os
import sys
from pathlib import Path

# autodoc imports the package from the checkout, so the pages document the code beside them.
sys.path.insert(0, os.path.abspath(".."))

import sb3_memory

project = "sb3-memory"
author = "sb3-memory contributors"
copyright = "2026, sb3-memory contributors"
version = release = sb3_memory.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    # Markdown for the included CHANGELOG.md and the result tables of docs/results/.
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
# Plain "::" blocks are diagrams and output, not Python.
highlight_language = "text"
myst_heading_anchors = 3

# Docstrings use SB3's ``:param name:`` fields, which autodoc reads natively.
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
# Types in the signature line; the :param: fields keep the prose (SB3 does the same).
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
# Type hints name classes of torch, gymnasium and SB3 that no page here documents.
nitpicky = False

html_theme = "sphinx_rtd_theme"
html_title = f"sb3-memory {release}"
# Copied beside index.html, so the front page can link them.
html_extra_path = ["../LICENSE", "../CITATION.cff"]
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_depth": 3, "collapse_navigation": False}


def end_field_lists(app, what, name, obj, options, lines: list[str]) -> None:
    """
    Close a ``:param:`` list that a plain sentence follows directly (the house style writes "The
    other parameters are those of ..." right under the list); reStructuredText needs a blank line
    there, and without one every such docstring is a warning.
    """
    in_field_list = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith(":"):
            in_field_list = True
        elif not line.strip():
            in_field_list = False
        elif in_field_list and not line[0].isspace():
            lines.insert(index, "")
            in_field_list = False
            index += 1
        index += 1


def list_result_files(app, docname: str, source: list[str]) -> None:
    """
    Fill the benchmarks page's toctree with every table in docs/results/, titled by its file or
    folder name (many share a heading), so that a result file added later is listed, not a warning.
    """
    if docname != "benchmarks":
        return
    results = Path(app.srcdir) / "results"
    entries = []
    for path in sorted(results.rglob("*.md"), key=lambda path: (path.parent != results, str(path))):
        name = path.relative_to(results).with_suffix("")
        title = name.parent if name.name == "comparison" else name
        entries.append(f"{title} <results/{name}>")
    source[0] = source[0].replace("RESULT_FILES", "\n".join(entries))


def setup(app) -> None:
    app.connect("autodoc-process-docstring", end_field_lists)
    app.connect("source-read", list_result_files)
