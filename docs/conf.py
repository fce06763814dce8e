"""Sphinx configuration: Markdown pages (MyST), the API reference by autodoc, the furo theme.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (``nox -s docs``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The docs describe the checkout they live in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import neural_arch

project = "neural_arch"
author = "the neural_arch authors"
copyright = "the neural_arch authors"
release = neural_arch.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ maths, ::: fences, and anchors for headings so pages can link to sections.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# autodoc: members in source order, signatures without the type-hint noise.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"neural_arch {release}"
html_static_path = ["_static"]
