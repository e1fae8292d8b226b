"""flowcourse: the helper package of a course on normalizing flows.

Modules, one idea each: ``bijections`` (invertible layers), ``autoregressive`` (MADE, MAF and
IAF layers), ``splines`` (rational-quadratic splines, spline flows), ``flows`` (a base
distribution pushed through bijections), ``checks`` (numerical checks with messages for learners),
``data`` (toy densities with exact log-densities, digits), ``train`` (one training loop),
``plot``, ``vae``, ``release`` and ``grading`` (exercises and their grader).
"""

from flowcourse.runtime import setup

__version__ = "0.1.0"
__all__ = ["setup", "__version__"]
