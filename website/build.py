"""Build the course site from the stored notebooks: ``python -m website`` (``make site``).

Jupyter Book 1 (Sphinx, myst-nb, sphinx-book-theme) renders each notebook's stored outputs;
nothing is executed. The book's source is staged in ``build/site/src``: the notebooks of
``notebooks/`` and ``exercises/`` (never ``solutions/``), found on disk, copied as they are; the
landing and assignments pages written by :mod:`website.pages`; the benchmark summary with its CSV
files. The HTML goes to ``build/site/html`` (publish that folder as it is).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from website import pages

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
OUT = ROOT / "build" / "site"


def discover(root: Path = ROOT) -> tuple[list[Path], list[Path]]:
    """Lessons (``notebooks/*.ipynb``) and assignments (``exercises/*.ipynb``), in order,
    relative to ``root``. Solutions are never published."""
    lessons = sorted(p.relative_to(root) for p in (root / "notebooks").glob("*.ipynb"))
    exercises = sorted(p.relative_to(root) for p in (root / "exercises").glob("*.ipynb"))
    if not lessons:
        raise SystemExit(f"no notebooks in {root / 'notebooks'}: nothing to build")
    return lessons, exercises


def book_config() -> dict:
    """Jupyter Book's _config.yml, as a dict."""
    return {
        "title": "flowcourse",
        "author": "the flowcourse authors",
        "copyright": "the flowcourse authors",
        "only_build_toc_files": True,
        # The stored outputs are the page: they are re-checked by nbval, never re-run here.
        "execute": {"execute_notebooks": "off"},
        "repository": {"url": pages.REPOSITORY, "branch": pages.BRANCH, "path_to_book": ""},
        "launch_buttons": {
            "binderhub_url": "https://mybinder.org",
            "notebook_interface": "jupyterlab",
        },
        "html": {
            "favicon": "_static/favicon.svg",
            "use_repository_button": True,
            "use_download_button": True,
            "home_page_in_navbar": True,
        },
        "parse": {"myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence"]},
        "sphinx": {
            "local_extensions": {"flowcourse_site": str(HERE / "ext")},
            "config": {
                # No CDN: the progress-bar widgets are shown as their stored text (their final
                # state once re-executed), and ipywidgets' JavaScript is not loaded.
                "nb_ipywidgets_js": {},
                "nb_mime_priority_overrides": [
                    ["html", "application/vnd.jupyter.widget-view+json", None],
                    ["html", "application/vnd.jupyter.widget-state+json", None],
                ],
                "html_static_path": ["_static"],
                "html_css_files": ["flowcourse.css"],
                "html_show_sourcelink": False,
                "html_use_index": False,
                # Long lessons hold hundreds of formulas: MathJax typesets those in view first
                # (its lazy extension) instead of all of them before the page is ready.
                "mathjax3_config": {
                    "loader": {"load": ["ui/lazy"]},
                    "options": {
                        "processHtmlClass": "tex2jax_process|mathjax_process|math|output_area"
                    },
                },
                # Jupyter renders $$...$$ inside a paragraph or list item as display math.
                "myst_dmath_double_inline": True,
                # Light by default (figures are drawn on white); the reader can switch.
                "html_context": {"default_mode": "light"},
                "html_last_updated_fmt": None,
                "suppress_warnings": ["myst.domains", "mystnb.unknown_mime_type"],
            },
        },
    }


# Appended to the conf.py that `jupyter-book config sphinx` writes. Jupyter Book always adds
# these; the site has no live code (thebe, whose inline script is added twice and then fails
# to run), no comments and no LaTeX/PDF build.
CONF_OVERRIDES = """
# --- flowcourse (website/build.py) ---
_unused = {
    "sphinx_thebe", "sphinx_comments", "sphinx_jupyterbook_latex", "sphinx_multitoc_numbering"
}
extensions = [e for e in extensions if e not in _unused]
"""


# MyST front matter: no in-page contents column, so that tables get the width.
WIDE_PAGE = b"---\nhtml_theme.sidebar_secondary.remove: true\n---\n\n"


def toc(lessons: list[Path], exercises: list[Path]) -> dict:
    def doc(path: Path) -> dict:
        return {"file": path.with_suffix("").as_posix()}

    parts = [{"caption": "Lessons", "chapters": [doc(p) for p in lessons]}]
    if exercises:
        parts.append(
            {
                "caption": "Assignments",
                "chapters": [{"file": "assignments", "sections": [doc(p) for p in exercises]}],
            }
        )
    parts.append({"caption": "Results", "chapters": [{"file": "benchmarks/summary"}]})
    return {"format": "jb-book", "root": "index", "parts": parts}


def _write(path: Path, text: str | bytes) -> None:
    """Write only if the content changed, so that Sphinx rebuilds only what changed."""
    data = text.encode() if isinstance(text, str) else text
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sync(files: dict[Path, bytes], folder: Path) -> None:
    """Make ``folder`` hold exactly ``files`` (relative path -> content)."""
    for rel, data in files.items():
        _write(folder / rel, data)
    if folder.exists():
        for old in folder.rglob("*"):
            if old.is_file() and old.relative_to(folder) not in files:
                old.unlink()


def stage(src: Path, root: Path = ROOT) -> list[str]:
    """Write the book's source into ``src``; return the problems met reading its numbers."""
    lesson_paths, exercise_paths = discover(root)
    lessons = [pages.read_notebook(root, p) for p in lesson_paths]
    exercises = [pages.read_notebook(root, p) for p in exercise_paths]
    landing, problems = pages.landing_page(root, lessons, exercises)
    files: dict[Path, bytes] = {
        Path("_config.yml"): yaml.safe_dump(book_config(), sort_keys=False).encode(),
        Path("_toc.yml"): yaml.safe_dump(
            toc(lesson_paths, exercise_paths), sort_keys=False
        ).encode(),
        Path("index.md"): WIDE_PAGE + landing.encode(),
        Path("assignments.md"): pages.assignments_page(exercises, lessons).encode(),
    }
    for path in lesson_paths + exercise_paths:
        files[path] = (root / path).read_bytes()
    results = root / "benchmarks" / "results"
    for path in sorted(results.glob("*")):
        if path.suffix in (".md", ".csv"):
            data = path.read_bytes()
            if path.suffix == ".md":  # wide tables: give them the page's full width
                data = WIDE_PAGE + data
            files[Path("benchmarks") / path.name] = data
    files.setdefault(
        Path("benchmarks/summary.md"), b"# Benchmarks\n\nNo results yet: run `make bench`.\n"
    )
    for path in sorted((HERE / "static").glob("*")):
        files[Path("_static") / path.name] = path.read_bytes()
    # conf.py is generated from _config.yml below; keep it.
    conf = src / "conf.py"
    files[Path("conf.py")] = conf.read_bytes() if conf.exists() else b""
    _sync(files, src)
    return problems


def _run(cmd: list, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(out: Path = OUT, *, strict: bool = True, clean: bool = False) -> Path:
    """Stage, configure and build; return the HTML folder."""
    start, cpu0 = time.perf_counter(), _cpu()
    src, html, doctrees = out / "src", out / "html", out / "doctrees"
    if clean:
        shutil.rmtree(out, ignore_errors=True)
    problems = stage(src)
    for problem in problems:
        print("WARNING:", problem, file=sys.stderr)
    bin_dir = Path(sys.executable).parent
    _run([bin_dir / "jupyter-book", "config", "sphinx", src])
    conf = src / "conf.py"
    # A change to the site's own reading of notebooks rebuilds every page (a config change).
    code = hashlib.sha256(b"".join(p.read_bytes() for p in _site_code())).hexdigest()[:16]
    conf.write_text(conf.read_text() + CONF_OVERRIDES + f"flowcourse_site_code = {code!r}\n")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-d", doctrees, src, html]
    # Sphinx copies static files only when a page is out of date, and keeps one already in the
    # output: put the site's own in place, and rewrite every page (their links carry a
    # checksum of each file) when one of them changed.
    if _place_static(html / "_static"):
        cmd.insert(3, "-a")
    if strict:
        cmd[3:3] = ["-W", "--keep-going"]
    # conf.py names the local extension; jupyter-book's own CLI would put its folder on the path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "ext"), str(ROOT)])}
    _run(cmd, env)
    (html / ".nojekyll").touch()  # GitHub Pages: serve _static/ and _sources/ as they are
    for source_map in (html / "_static").rglob("*.js.map"):  # the theme's, for its developers
        source_map.unlink()
    wall, cpu = time.perf_counter() - start, _cpu() - cpu0
    n_pages = sum(1 for p in html.rglob("*.html") if p.relative_to(html).parts[0] != "_static")
    lessons, exercises = discover()
    print(
        f"site: {html.relative_to(ROOT) if html.is_relative_to(ROOT) else html} — "
        f"{len(lessons)} lessons, {len(exercises)} assignments, {n_pages} HTML pages, "
        f"{du(html) / 1e6:.1f} MB; built in {wall:.0f} s wall, {cpu:.0f} CPU s"
    )
    return html


def _site_code() -> list[Path]:
    return sorted((HERE / "ext").glob("*.py")) + [HERE / "cells.py"]


def _place_static(target: Path) -> bool:
    """Copy website/static/ into the output's _static/; True if a file was new or changed."""
    changed = False
    for path in sorted((HERE / "static").glob("*")):
        dst = target / path.name
        if not dst.exists() or dst.read_bytes() != path.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
            changed = True
    return changed


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m website", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default build/site)")
    parser.add_argument("--clean", action="store_true", help="rebuild from scratch")
    parser.add_argument(
        "--no-strict", dest="strict", action="store_false", help="do not fail on Sphinx warnings"
    )
    args = parser.parse_args(argv)
    try:
        build(args.out.resolve(), strict=args.strict, clean=args.clean)
    except subprocess.CalledProcessError as exc:
        print(f"site build failed ({exc.cmd[0]} exited {exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
