"""What a reader sees of a notebook cell on the site (used by the site's Sphinx extension)."""

from __future__ import annotations

import ast

# Tags that already hide a cell's code (myst-nb and Jupyter Book honour them).
HIDE_TAGS = {"hide-cell", "remove-cell", "hide-input", "remove-input"}


def is_assertion_only(source: str) -> bool:
    """True if every top-level statement of ``source`` is an ``assert`` (and there is one)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(stmt, ast.Assert) for stmt in body)


def reader_tags(cell: dict) -> list[str]:
    """The tags a cell needs on the site: its own, plus those its state implies.

    A code cell that only asserts is collapsed (``hide-cell``): on the site a reader meets
    results, not checks. JupyterLab's own collapse flags become the matching tags
    (``source_hidden`` -> ``hide-input``, ``outputs_hidden`` -> ``hide-output``, both ->
    ``hide-cell``). A cell that already hides its code keeps its tags.
    """
    meta = cell.get("metadata", {})
    tags = list(meta.get("tags", []))
    if cell.get("cell_type") != "code" or HIDE_TAGS & set(tags):
        return tags
    jupyter = meta.get("jupyter", {})
    source_hidden, outputs_hidden = jupyter.get("source_hidden"), jupyter.get("outputs_hidden")
    if is_assertion_only("".join(cell.get("source", ""))) or (source_hidden and outputs_hidden):
        tags.append("hide-cell")
    elif source_hidden:
        tags.append("hide-input")
    elif outputs_hidden:
        tags.append("hide-output")
    return tags
