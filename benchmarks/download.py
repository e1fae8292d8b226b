"""What a clean Linux machine downloads to set the course up: ``python -m benchmarks.download``.

pip resolves each install in an empty virtual environment and reports what it would fetch
(``pip install --dry-run --report``), isolated from this machine's pip configuration, local
wheel folders, constraints and cache (``PIP_CONFIG_FILE=/dev/null``, ``--isolated``,
``--no-cache-dir``); the size of every file it names is then read from the index (an HTTP HEAD
of its URL). Installs:

- ``torch==2.13.0`` and the whole ``requirements.txt``, from PyPI alone (on Linux, torch's
  CUDA build and the CUDA libraries it requires);
- the same with torch's CPU build, from PyTorch's CPU wheel index (``make venv TORCH_INDEX=cpu``).
  Where that index cannot be reached, ``--cpu-wheels DIR`` resolves torch from a folder holding
  the same CPU wheel (``torch-2.13.0+cpu-...whl``) and says so in the ``torch_from`` column.

Writes ``benchmarks/results/download.csv``. Needs the network; nothing is installed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from benchmarks.common import RESULTS, ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
COLUMNS = [
    "install",
    "torch_from",
    "files",
    "total_mb",
    "torch_mb",
    "cuda_mb",
    "other_mb",
    "python",
    "platform",
    "pip",
    "date",
]
_CUDA = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def _isolated_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no global, user or site pip.conf (constraints, links)
    return env


def resolve(venv: Path, args: list[str]) -> list[dict]:
    """What ``pip install ARGS`` would download into a clean environment (pip's report)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            *args,
        ]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env=_isolated_env())
        return json.loads(report.read_text())["install"]


def file_size(url: str) -> int:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).stat().st_size
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.headers["Content-Length"])


def measure(name: str, torch_from: str, items: list[dict], pip_version: str) -> dict:
    sizes = {"torch": 0, "cuda": 0, "other": 0}
    for item in items:
        dist = item["metadata"]["name"].lower()
        size = file_size(item["download_info"]["url"])
        key = "torch" if dist == "torch" else "cuda" if _CUDA.match(dist) else "other"
        sizes[key] += size
    return {
        "install": name,
        "torch_from": torch_from,
        "files": len(items),
        "total_mb": round(sum(sizes.values()) / 1e6, 1),
        "torch_mb": round(sizes["torch"] / 1e6, 1),
        "cuda_mb": round(sizes["cuda"] / 1e6, 1),
        "other_mb": round(sizes["other"] / 1e6, 1),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "pip": pip_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    }


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/torch/", timeout=20).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.download", description=__doc__)
    parser.add_argument(
        "--cpu-wheels",
        type=Path,
        help="folder with torch's CPU wheel, used when PyTorch's CPU index is unreachable",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "download.csv")
    args = parser.parse_args(argv)

    if _reachable(CPU_INDEX):
        cpu_args, cpu_from = ["--extra-index-url", CPU_INDEX], CPU_INDEX
    elif args.cpu_wheels:
        wheels = sorted(args.cpu_wheels.glob("torch-2.13.0+cpu-*.whl"))
        if not wheels:
            parser.error(f"no torch-2.13.0+cpu wheel in {args.cpu_wheels}")
        cpu_args = ["--find-links", str(args.cpu_wheels)]
        cpu_from = f"the CPU wheel {wheels[0].name} ({CPU_INDEX} unreachable)"
    else:
        parser.error(f"{CPU_INDEX} is unreachable: pass --cpu-wheels DIR")

    requirements = str(ROOT / "requirements.txt")
    installs = [
        ("torch==2.13.0", "PyPI", ["torch==2.13.0"]),
        ("requirements.txt", "PyPI", ["-r", requirements]),
        ("torch==2.13.0", cpu_from, ["torch==2.13.0", *cpu_args]),
        ("requirements.txt", cpu_from, ["-r", requirements, *cpu_args]),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip_version = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        for name, torch_from, pip_args in installs:
            row = measure(name, torch_from, resolve(venv, pip_args), pip_version)
            print(row, flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
