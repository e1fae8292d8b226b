"""The site's build, without a browser: what it publishes, hides, and reads its numbers from."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import nbformat
import pytest

from website import build, pages
from website.cells import is_assertion_only, reader_tags

ROOT = Path(__file__).resolve().parent.parent


def _nb(path: Path, title: str, cells: list | None = None) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat it is about.\n\n## More")]
    nb.cells += cells or []
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def course(tmp_path):
    """A small course: two lessons (out of order on disk), one exercise, one solution."""
    _nb(tmp_path / "notebooks" / "02_second.ipynb", "02 · Second: more")
    _nb(tmp_path / "notebooks" / "01_first.ipynb", "01 · First: the start")
    _nb(tmp_path / "exercises" / "01_task.ipynb", "01 · Assignment: a task")
    _nb(tmp_path / "solutions" / "01_task.ipynb", "01 · Assignment: a task (solved)")
    return tmp_path


def test_discover_finds_lessons_and_assignments_in_order_and_never_solutions(course):
    lessons, exercises = build.discover(course)
    assert [p.as_posix() for p in lessons] == [
        "notebooks/01_first.ipynb",
        "notebooks/02_second.ipynb",
    ]
    assert [p.as_posix() for p in exercises] == ["exercises/01_task.ipynb"]


def test_discover_refuses_an_empty_course(tmp_path):
    with pytest.raises(SystemExit, match="no notebooks"):
        build.discover(tmp_path)


def test_toc_lists_lessons_then_assignments_then_benchmarks(course):
    toc = build.toc(*build.discover(course))
    assert toc["root"] == "index"
    lessons, assignments, results = toc["parts"]
    assert [c["file"] for c in lessons["chapters"]] == ["notebooks/01_first", "notebooks/02_second"]
    assert assignments["chapters"][0]["sections"] == [{"file": "exercises/01_task"}]
    assert results["chapters"] == [{"file": "benchmarks/summary"}]


def test_stage_copies_the_notebooks_unchanged_and_drops_stale_pages(course, tmp_path):
    (course / "benchmarks" / "results").mkdir(parents=True)
    (course / "benchmarks" / "results" / "summary.md").write_text("# Benchmarks\n")
    src = tmp_path / "src"
    (src / "notebooks").mkdir(parents=True)
    (src / "notebooks" / "00_removed.ipynb").write_text("{}")
    build.stage(src, course)
    for rel in ("notebooks/01_first.ipynb", "notebooks/02_second.ipynb", "exercises/01_task.ipynb"):
        assert (src / rel).read_bytes() == (course / rel).read_bytes()
    assert not (src / "notebooks" / "00_removed.ipynb").exists()
    assert not (src / "solutions").exists()
    for name in ("index.md", "assignments.md", "_toc.yml", "_config.yml", "benchmarks/summary.md"):
        assert (src / name).exists(), name
    index = (src / "index.md").read_text()
    assert "[01 · First](notebooks/01_first.ipynb)" in index
    assert index.index("01_first") < index.index("02_second")
    assert "(notebooks/01_first.ipynb)" in (src / "assignments.md").read_text()


def test_a_course_without_benchmark_results_still_has_the_page(course, tmp_path):
    build.stage(tmp_path / "src", course)
    assert "make bench" in (tmp_path / "src" / "benchmarks" / "summary.md").read_text()


def test_the_book_executes_nothing_and_fetches_nothing():
    config = build.book_config()
    assert config["execute"]["execute_notebooks"] == "off"
    sphinx = config["sphinx"]["config"]
    assert sphinx["nb_ipywidgets_js"] == {}, "ipywidgets' JavaScript would come from a CDN"
    assert "sphinx_thebe" in build.CONF_OVERRIDES
    ns = {"extensions": ["myst_nb", "sphinx_thebe", "sphinx_book_theme"]}
    exec(build.CONF_OVERRIDES, ns)
    assert ns["extensions"] == ["myst_nb", "sphinx_book_theme"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("assert x == 1", True),
        ("# a comment\nassert x == 1, 'message'\nassert y\n", True),
        ("assert x\nprint(x)", False),
        ("claim('gap', gap, at_most=0.05)", False),
        ("", False),
        ("assert (", False),
    ],
)
def test_assertion_only(source, expected):
    assert is_assertion_only(source) is expected


def test_reader_tags_collapse_assertions_and_honour_jupyter_collapse_flags():
    code = nbformat.v4.new_code_cell
    assert reader_tags(code("assert ok")) == ["hide-cell"]
    assert reader_tags(code("x = 1")) == []
    tagged = code("assert ok", metadata={"tags": ["remove-cell"]})
    assert reader_tags(tagged) == ["remove-cell"]
    kept = code("assert ok", metadata={"tags": ["nbval-ignore-output"]})
    assert reader_tags(kept) == ["nbval-ignore-output", "hide-cell"]
    src_hidden = code("x = 1", metadata={"jupyter": {"source_hidden": True}})
    assert reader_tags(src_hidden) == ["hide-input"]
    out_hidden = code("x = 1", metadata={"jupyter": {"outputs_hidden": True}})
    assert reader_tags(out_hidden) == ["hide-output"]
    both = code("x = 1", metadata={"jupyter": {"source_hidden": True, "outputs_hidden": True}})
    assert reader_tags(both) == ["hide-cell"]
    assert reader_tags(nbformat.v4.new_markdown_cell("assert nothing")) == []


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_landing_page_reads_its_numbers_from_the_result_files(tmp_path):
    _nb(tmp_path / "notebooks" / "04_realnvp_2d.ipynb", "04 · RealNVP in 2D: coupling layers")
    results = tmp_path / "benchmarks" / "results"
    gaps = [0.0349, 0.0281, 0.0297]
    _write_csv(
        results / "nb04.csv",
        [
            {
                "seed": s,
                "row": "two moons (noise 0.05)",
                "metric": "gap",
                "value": g,
                "status": "ok",
            }
            for s, g in enumerate(gaps)
        ]
        + [
            {"seed": 3, "row": "two moons (noise 0.05)", "metric": "gap", "value": 9, "status": "x"}
        ],
    )
    _write_csv(
        results / "runtime.csv",
        [
            {"notebook": "notebooks/04_realnvp_2d.ipynb", "cpu_s": c, "status": "ok"}
            for c in (40.0, 48.4, 57.1)
        ],
    )
    (tmp_path / "notebooks" / "results").mkdir()
    (tmp_path / "notebooks" / "results" / "04_realnvp_2d.json").write_text(
        json.dumps({"moons_gap": 0.0349056, "eight_gaussians_gap": 0.110114})
    )
    lessons = [pages.read_notebook(tmp_path, Path("notebooks/04_realnvp_2d.ipynb"))]
    text, problems = pages.landing_page(tmp_path, lessons, [])
    row = next(line for line in text.splitlines() if line.startswith("| [04"))
    mean, sd = statistics.fmean(gaps), statistics.stdev(gaps)
    assert f"{mean:.3f} ± {sd:.3f} nats over 3 seeds" in row, row  # the failed run is left out
    assert "0.035 nats" in row and "0.110 nats" in row, row
    assert "| 48 s |" in row, row  # the median CPU time
    # The eight Gaussians' benchmark row is missing from this CSV: said, not invented.
    assert problems and "eight Gaussians" in problems[0]
    # Change the file, and the page changes with it.
    (tmp_path / "notebooks" / "results" / "04_realnvp_2d.json").write_text(
        json.dumps({"moons_gap": 0.0411, "eight_gaussians_gap": 0.110114})
    )
    assert "0.041 nats" in pages.landing_page(tmp_path, lessons, [])[0]


def test_the_course_totals_say_when_a_lesson_has_no_budget_or_time(tmp_path):
    _nb(tmp_path / "notebooks" / "01_change_of_variables.ipynb", "01 · Change of variables")
    _nb(tmp_path / "notebooks" / "99_new.ipynb", "99 · A lesson with no budget yet")
    lessons = [
        pages.read_notebook(tmp_path, p.relative_to(tmp_path))
        for p in sorted((tmp_path / "notebooks").glob("*.ipynb"))
    ]
    text = pages.landing_page(tmp_path, lessons, [])[0]
    total = next(line for line in text.splitlines() if "the whole course" in line)
    budget = pages.budgets()["01"]
    assert f"| {budget:.0f} s for 1 of 2 lessons | — |" in total, total
    assert "| [99 · A lesson with no budget yet](notebooks/99_new.ipynb) | — | — | — |" in text


def test_a_recorded_result_that_disappears_is_reported(tmp_path):
    _nb(tmp_path / "notebooks" / "04_realnvp_2d.ipynb", "04 · RealNVP in 2D")
    (tmp_path / "notebooks" / "results").mkdir()
    (tmp_path / "notebooks" / "results" / "04_realnvp_2d.json").write_text('{"other": 1.0}')
    lessons = [pages.read_notebook(tmp_path, Path("notebooks/04_realnvp_2d.ipynb"))]
    problems = pages.landing_page(tmp_path, lessons, [])[1]
    assert any("has no 'moons_gap'" in p for p in problems), problems


def test_every_headline_resolves_in_this_repository():
    lesson_paths, exercise_paths = build.discover(ROOT)
    lessons = [pages.read_notebook(ROOT, p) for p in lesson_paths]
    exercises = [pages.read_notebook(ROOT, p) for p in exercise_paths]
    text, problems = pages.landing_page(ROOT, lessons, exercises)
    assert not problems, "\n".join(problems)
    for nb in lessons:
        assert f"]({nb.path.as_posix()})" in text, f"{nb.path} missing from the course map"


def test_read_notebook_needs_a_title(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="first cell should be markdown"):
        pages.read_notebook(tmp_path, Path("x.ipynb"))
