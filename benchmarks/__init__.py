"""Benchmarks of the course: numbers behind every claim the course makes about itself.

``python -m benchmarks`` (or ``make bench``) runs its parts and writes, for each, a CSV of raw
runs to ``benchmarks/results/`` plus ``benchmarks/results/summary.md``, which is regenerated
from whatever CSVs exist (so parts can be re-run one at a time):

- ``runtime``: every notebook of ``notebooks/`` and ``solutions/`` executed headless from a
  fresh kernel on one torch thread, wall and CPU seconds, against its budget.
- ``realnvp``: the course's RealNVP against zuko's and normflows' on two moons (noise 0.05),
  same data, depth, width, optimiser, batch and steps: test NLL, gap to the exact density,
  CPU ms per step, parameter count, over seeds.
- ``splines``: notebook 08's spline flow and MAF over seeds, paired against notebook 04's
  RealNVP on the same test points, and the spline flow against zuko's NSF (gap, time per step).
- ``vae``: notebook 07's table (diagonal, planar, IAF posteriors) over seeds, by running a
  seeded copy of the notebook (:func:`benchmarks.nbseed.notebook_results`).
- ``testsuite``: the time of ``make test`` in a fresh clone, install included.

Benchmarks are not tests: nothing here is asserted in the test suite.
"""
