"""flowcourse.results: one stored place for the numbers notebooks quote from each other."""

import json

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
