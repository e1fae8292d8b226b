"""``python -m flowcourse doctor``: is this machine ready for the course?"""

from __future__ import annotations

import importlib
import platform
import re
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


# Distributions that a CUDA build of torch brings with it (PyPI's default on Linux).
_GPU_DISTS = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def dist_size(dist: metadata.Distribution) -> int:
    """Bytes on disk of the files ``dist`` installed (from its RECORD)."""
    total = 0
    for file in dist.files or []:
        try:
            total += Path(dist.locate_file(file)).stat().st_size
        except OSError:
            pass
    return total


def torch_build(cuda: str | None, hip: str | None = None) -> str:
    """'CPU', 'CUDA 12.6' or 'ROCm 6.2', from ``torch.version.cuda`` / ``torch.version.hip``."""
    if cuda:
        return f"CUDA {cuda}"
    if hip:
        return f"ROCm {hip}"
    return "CPU"


def torch_footprint() -> tuple[int, int]:
    """Bytes on disk of torch, and of the GPU libraries installed beside it (0 for a CPU build)."""
    torch_bytes = gpu_bytes = 0
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "torch":
            torch_bytes += dist_size(dist)
        elif _GPU_DISTS.match(name):
            gpu_bytes += dist_size(dist)
    return torch_bytes, gpu_bytes


def _torch_lines() -> tuple[list[str], list[str]]:
    import torch

    build = torch_build(torch.version.cuda, getattr(torch.version, "hip", None))
    torch_bytes, gpu_bytes = torch_footprint()
    size = f"{torch_bytes / 1e9:.2f} GB on disk"
    if gpu_bytes:
        size += f", and {gpu_bytes / 1e9:.2f} GB of GPU libraries beside it"
    info = [f"torch build {build} ({torch.__version__}), {size}"]
    notes = []
    if build != "CPU":
        notes.append(
            f"torch is the {build} build: the course runs on the CPU and needs only the CPU build "
            "(about 0.2 GB to download). On Linux: make clean && make venv TORCH_INDEX=cpu"
        )
    return info, notes


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
        build_info, build_notes = _torch_lines()
        info += build_info
        warnings += build_notes
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
