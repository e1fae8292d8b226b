"""flowcourse.results: one stored place for the numbers notebooks quote from each other."""

import json

import nbformat
import pytest

from flowcourse.results import read, record


def test_record_then_read_merges_and_rounds(tmp_path):
    record("04_realnvp_2d", folder=tmp_path, gap=0.0301234567, nll=0.311)
    record("04_realnvp_2d", folder=tmp_path, gap=0.0305)
    assert read("04_realnvp_2d", folder=tmp_path) == {"gap": 0.0305, "nll": 0.311}
    first = (tmp_path / "04_realnvp_2d.json").read_text()
    record("04_realnvp_2d", folder=tmp_path, gap=0.0305)
    assert (tmp_path / "04_realnvp_2d.json").read_text() == first  # re-runs rewrite the same
    assert json.loads(first) == {"gap": 0.0305, "nll": 0.311}


def test_bad_names_values_and_missing_files_are_explained(tmp_path):
    with pytest.raises(ValueError, match="named after it"):
        record("../escape", folder=tmp_path, gap=1.0)
    with pytest.raises(ValueError, match="finite"):
        record("04_realnvp_2d", folder=tmp_path, gap=float("nan"))
    with pytest.raises(TypeError, match="expected a number, got str"):
        record("04_realnvp_2d", folder=tmp_path, gap="0.1")
    with pytest.raises(FileNotFoundError, match="run that notebook first"):
        read("05_realnvp_digits", folder=tmp_path)


def test_a_timing_run_leaves_the_recorded_results_as_they_were(tmp_path):
    # benchmarks' runtime part executes lessons in place with write=False: their results/*.json
    # must keep the numbers the stored outputs printed.
    from flowcourse.notebooks import execute

    (tmp_path / "results").mkdir()
    kept = tmp_path / "results" / "01_kept.json"
    kept.write_text('{"x": 1.0}\n')
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from flowcourse.results import record\n"
            "record('01_kept', x=2.0)\nrecord('02_new', y=3.0)"
        )
    ]
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    execute(path, timeout=60, write=False)
    assert kept.read_text() == '{"x": 1.0}\n'
    assert not (tmp_path / "results" / "02_new.json").exists()
    execute(path, timeout=60, write=True)
    assert json.loads(kept.read_text()) == {"x": 2.0}
