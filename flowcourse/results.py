"""The course's measured numbers, stored once: a notebook records them, later ones read them.

A number quoted in two places has one source. Notebook 04 measures RealNVP's gap on eight
Gaussians; notebook 08 compares its spline flow with it. Instead of retyping 0.122, 04 calls
``record("04_realnvp_2d", gap_eight_gaussians=...)`` where it measures it, and 08 calls
``read("04_realnvp_2d")["gap_eight_gaussians"]``.

Files live in ``results/`` beside the notebooks (the current folder, where Jupyter runs a
notebook), one small JSON file per notebook, committed with the notebook whose stored outputs
they match. A benchmark that runs a copy of a notebook elsewhere writes to its own copy.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

__all__ = ["record", "read", "course_results", "RESULTS_DIR"]

RESULTS_DIR = Path("results")
_NAME = re.compile(r"^\d\d_[a-z0-9_]+$")


def _path(notebook: str, folder: str | Path | None) -> Path:
    if not isinstance(notebook, str) or not _NAME.match(notebook):
        raise ValueError(
            f"a notebook's results are named after it, e.g. '04_realnvp_2d'; got {notebook!r}"
        )
    return Path(folder if folder is not None else RESULTS_DIR) / f"{notebook}.json"


def record(notebook: str, *, folder: str | Path | None = None, **numbers: float) -> None:
    """Store ``numbers`` (name=value, finite floats) as the results of ``notebook``.

    Values are merged into what the notebook recorded before, rounded to 6 significant
    digits so that re-running a notebook rewrites the same file.
    """
    if not numbers:
        raise TypeError("record(notebook, name=value, ...) needs at least one number")
    clean = {}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value}")
        clean[name] = float(f"{float(value):.6g}")
    path = _path(notebook, folder)
    stored = read(notebook, folder=folder) if path.exists() else {}
    stored.update(clean)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(stored.items())), indent=1) + "\n")


def read(notebook: str, *, folder: str | Path | None = None) -> dict[str, float]:
    """The numbers ``notebook`` recorded, as a dict; a clear error when there are none."""
    path = _path(notebook, folder)
    if not path.exists():
        raise FileNotFoundError(
            f"no stored results for notebook {notebook} ({path} is missing): run that notebook "
            "first, from the notebooks/ folder"
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object of numbers")
    return {str(k): float(v) for k, v in data.items()}


def course_results(notebook: str) -> dict[str, float]:
    """What ``notebook`` stored in the course's own ``notebooks/results/`` (an assignment's
    figure quotes a lesson's number from there); empty when it is not there."""
    folder = Path(__file__).resolve().parent.parent / "notebooks" / "results"
    try:
        return read(notebook, folder=folder)
    except (FileNotFoundError, ValueError):
        return {}
