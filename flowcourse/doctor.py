"""``python -m flowcourse doctor``: is this machine ready for the course?"""

from __future__ import annotations

import importlib
import platform
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["diagnose", "main"]

# import name -> distribution name, for every module a notebook imports.
NOTEBOOK_MODULES = {
    "torch": "torch",
    "numpy": "numpy",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "seaborn": "seaborn",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
    "torchdiffeq": "torchdiffeq",
    "ipywidgets": "ipywidgets",
    "ipykernel": "ipykernel",
    "nbformat": "nbformat",
    "nbclient": "nbclient",
    "zuko": "zuko",
}


def _pins() -> dict[str, str]:
    """The pinned versions from requirements.txt, if this is a checkout."""
    req = Path(__file__).resolve().parent.parent / "requirements.txt"
    pins: dict[str, str] = {}
    if req.exists():
        for line in req.read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==")
                pins[name.strip().lower()] = version.strip()
    return pins


def diagnose() -> tuple[list[str], list[str], list[str]]:
    """Return (info lines, warnings, errors) about the environment."""
    info, warnings, errors = [], [], []
    info.append(f"python      {platform.python_version()} ({sys.executable})")
    if sys.version_info[:2] != (3, 11):
        warnings.append(
            f"Python {platform.python_version()}: the stored outputs were made with 3.11; "
            "numbers may differ in the last digits"
        )
    pins = _pins()
    for module, dist in NOTEBOOK_MODULES.items():
        try:
            importlib.import_module(module)
            version = metadata.version(dist)
        except Exception as exc:
            errors.append(
                f"cannot import {module} ({type(exc).__name__}: {exc}); "
                "run `make venv` (or pip install -r requirements.txt)"
            )
            continue
        info.append(f"{dist:<11} {version}")
        pinned = pins.get(dist.lower())
        if pinned and version.split("+")[0] != pinned:
            warnings.append(
                f"{dist} {version} is installed, the course pins {pinned}: "
                "stored outputs may not match exactly"
            )
    try:
        import torch

        info.append(f"threads     {torch.get_num_threads()} torch thread(s) (setup() sets 1)")
        device = "cuda available (the course uses the CPU)" if torch.cuda.is_available() else "cpu"
        info.append(f"device      {device}")
    except Exception:
        pass
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
        exe = spec.argv[0]
        if exe not in ("python", "python3", "python3.11") and Path(exe) != Path(sys.executable):
            warnings.append(
                f"the 'python3' Jupyter kernel runs {exe}, not this environment's "
                f"{sys.executable}: `import flowcourse` may fail in notebooks; "
                "start JupyterLab with `make lab`"
            )
        info.append("kernel      python3 -> this interpreter")
    except Exception as exc:
        errors.append(f"no 'python3' Jupyter kernel ({exc}); install ipykernel")
    try:
        importlib.import_module("flowcourse")
    except Exception as exc:  # pragma: no cover - we are running from it
        errors.append(f"cannot import flowcourse: {exc}")
    return info, warnings, errors


def main() -> int:
    info, warnings, errors = diagnose()
    print("flowcourse doctor")
    for line in info:
        print("  " + line)
    for line in warnings:
        print("WARNING: " + line)
    for line in errors:
        print("ERROR: " + line)
    if errors:
        print(f"{len(errors)} problem(s): the notebooks will not run until they are fixed.")
        return 1
    print("All notebook dependencies import: ready.")
    return 0
