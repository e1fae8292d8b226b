"""Sphinx extension for the course site: what a reader sees of a stored notebook.

- Cells that only assert are collapsed (tagged ``hide-cell`` as the page is read; the notebook on
  disk, and the copy readers download, are untouched), and JupyterLab's own collapse flags
  (``source_hidden``, ``outputs_hidden``) are honoured as the matching tags.
- Each notebook page starts with a line to run it: Binder, and the notebook to download.
- MathJax is served from the site itself (the ``mathjax`` package of django-static-mathjax),
  so pages typeset mathematics with no network.
"""

from __future__ import annotations

import json
import shutil
from html import escape
from pathlib import Path
from urllib.parse import quote

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

from website.cells import reader_tags

LOG = logging.getLogger(__name__)
MATHJAX_DIR = "mathjax"  # under _static
MATHJAX_SCRIPT = "tex-mml-chtml.js"
# What tex-mml-chtml.js loads on demand: TeX extensions (autoload), CHTML fonts, the menu and
# its accessibility tools. The other combined builds (SVG, "full") are not needed.
MATHJAX_PARTS = [MATHJAX_SCRIPT, "input", "output/chtml", "ui", "a11y", "sre", "adaptors"]


def _tag_cells(app: Sphinx, docname: str, source: list[str]) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    nb = json.loads(source[0])
    # Widgets are shown as their stored text; their saved state would only weigh on the page.
    nb.get("metadata", {}).pop("widgets", None)
    hidden = 0
    for cell in nb.get("cells", []):
        tags = reader_tags(cell)
        if tags != cell.get("metadata", {}).get("tags", []):
            cell.setdefault("metadata", {})["tags"] = tags
            hidden += 1
    if hidden:
        LOG.info(f"{docname}: {hidden} cell(s) collapsed for readers")
    source[0] = json.dumps(nb)


def _run_links(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Put 'Run it on Binder · Download the notebook' under a notebook page's title."""
    path = Path(app.env.doc2path(docname, base=False))
    if path.suffix != ".ipynb":
        return
    title = next(iter(doctree.findall(nodes.title)), None)
    if title is None:
        return
    repo = app.config.html_theme_options.get("repository_url", "").rstrip("/")
    branch = app.config.html_theme_options.get("repository_branch", "main")
    depth = docname.count("/")
    download = "../" * depth + "_sources/" + path.as_posix()
    links = [f'<a class="reference download" href="{escape(download)}" download>download it</a>']
    if repo.startswith("https://github.com/"):
        gh = repo.removeprefix("https://github.com/")
        binder = f"https://mybinder.org/v2/gh/{gh}/{branch}?urlpath=" + quote(
            f"lab/tree/{path.as_posix()}", safe=""
        )
        links.insert(
            0, f'<a class="reference external" href="{escape(binder)}">run it on Binder</a>'
        )
    html = (
        f'<p class="flowcourse-run">{_lead(path)} '
        + " or ".join(links)
        + " (<code>make lab</code> opens it in JupyterLab).</p>"
    )
    section = title.parent
    section.insert(section.index(title) + 1, nodes.raw("", html, format="html"))


def _lead(path: Path) -> str:
    if path.parts[0] == "exercises":
        return (
            "The assignment as students get it. To work on it, with its check cells, "
            "open it in the course's environment:"
        )
    return "This page shows the notebook's stored outputs. To run it yourself,"


def _copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if exc is not None or app.builder.format != "html":
        return
    import mathjax

    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = Path(app.outdir) / "_static" / MATHJAX_DIR
    for part in MATHJAX_PARTS:
        src, dst = es5 / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def _local_mathjax(app: Sphinx, config) -> None:
    config.mathjax_path = f"{MATHJAX_DIR}/{MATHJAX_SCRIPT}"


def setup(app: Sphinx) -> dict:
    import mathjax  # noqa: F401  (fail at start, not at the end, when it is missing)

    # Set by website/build.py to a digest of this code: when it changes, every page is re-read.
    app.add_config_value("flowcourse_site_code", "", "env")
    app.connect("config-inited", _local_mathjax)
    app.connect("source-read", _tag_cells)
    app.connect("doctree-resolved", _run_links)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
