"""Reproducible notebook sessions: one call at the top of every notebook."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

__all__ = ["setup", "FIGSIZE"]

FIGSIZE = (6.4, 4.0)


def setup(seed: int = 0, threads: int = 1, *, precision: int = 4) -> torch.Generator:
    """Seed every generator, fix torch's thread count and apply the course's plot style.

    Identical numbers need identical thread counts: with the same seed, 1 and 2 torch
    threads already differ at the 7th digit, so stored notebook outputs assume ``threads=1``.

    Returns a ``torch.Generator`` seeded with ``seed`` for code that wants its own stream.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"setup(seed=...) expects an integer, got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"setup(seed=...) expects 0 <= seed < 2**63, got {seed}")
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer):
        kind = type(threads).__name__
        raise TypeError(f"setup(threads=...) expects an integer >= 1, got {threads!r} ({kind})")
    if threads < 1:
        raise ValueError(f"setup(threads=...) expects an integer >= 1, got {threads}")
    seed, threads = int(seed), int(threads)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # Inter-op threads can only be set once per process; a re-run of the first cell must not fail.
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    _limit_blas_threads(threads)
    torch.set_default_dtype(torch.float32)
    torch.set_printoptions(precision=precision, sci_mode=False)
    np.set_printoptions(precision=precision, suppress=True)
    _style_plots()
    return torch.Generator().manual_seed(seed)


def _limit_blas_threads(threads: int) -> None:
    # NumPy's BLAS sums in a thread-count-dependent order too.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # threadpoolctl is optional (it comes with scikit-learn)
        pass


def _style_plots() -> None:
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    mpl.rcParams.update(
        {
            "figure.figsize": FIGSIZE,
            "figure.dpi": 80,
            "savefig.dpi": 80,
            "axes.titlesize": "medium",
            "image.cmap": "viridis",
            # Identical PNG bytes across runs keep notebook diffs small.
            "svg.hashsalt": "flowcourse",
        }
    )
    # Inline figures in a notebook: PNG only, with no embedded timestamps.
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            set_matplotlib_formats("png", metadata={"Software": None})
    except Exception:  # not inside IPython: nothing to configure
        pass
