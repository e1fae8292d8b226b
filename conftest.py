"""pytest configuration shared by the unit tests and nbval's notebook runs."""

# nbval compares every output field it is not told to skip. stderr carries kernel and
# progress-bar noise (warnings are caught separately by tests/test_notebook_hygiene.py);
# SVG embeds random ids.
NBVAL_SKIP = ("stderr", "image/svg+xml")


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare = tuple(collector.skip_compare) + NBVAL_SKIP
