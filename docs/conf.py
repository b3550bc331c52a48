"""Sphinx configuration: the Markdown pages (MyST) and the API reference from the docstrings."""

project = "deep-sarsa"
author = "the deep-sarsa developers"
copyright = "2026, the deep-sarsa developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
myst_heading_anchors = 3
nitpicky = False
