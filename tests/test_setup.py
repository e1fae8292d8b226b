"""Setting up on a learner's laptop: the pip command make runs, `make lab`, and the doctor."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

from flowcourse import doctor

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(tmp_path, *args: str) -> str:
    """What `make -n venv ...` would run for a fresh .venv (the real one is not touched)."""
    venv = tmp_path / "venv"
    out = subprocess.run(
        ["make", "-n", "venv", f"VENV={venv}", f"PYTHON={sys.executable}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out


def _pip_install_requirements(out: str) -> list[str]:
    lines = [ln for ln in out.splitlines() if "pip install" in ln and "requirements.txt" in ln]
    assert len(lines) == 1, out
    return shlex.split(lines[0])


@needs_make
def test_make_venv_uses_pypi_alone_by_default(tmp_path):
    cmd = _pip_install_requirements(_dry_run(tmp_path))
    assert cmd[-2:] == ["-r", "requirements.txt"], cmd
    assert not any("index-url" in part or "find-links" in part for part in cmd), cmd


@needs_make
def test_make_venv_torch_index_cpu_adds_pytorchs_cpu_wheel_index(tmp_path):
    cmd = _pip_install_requirements(_dry_run(tmp_path, "TORCH_INDEX=cpu"))
    assert cmd[cmd.index("--extra-index-url") + 1] == CPU_INDEX, cmd
    # PyPI stays the main index: every other package still comes from it.
    assert "--index-url" not in cmd and "-i" not in cmd
    # The index environment.yml (Binder, conda) names is the same one.
    assert f"--extra-index-url {CPU_INDEX}" in (ROOT / "environment.yml").read_text()


@needs_make
def test_make_venv_torch_index_accepts_another_index_url(tmp_path):
    url = "https://download.pytorch.org/whl/cu126"
    cmd = _pip_install_requirements(_dry_run(tmp_path, f"TORCH_INDEX={url}"))
    assert cmd[cmd.index("--extra-index-url") + 1] == url


@needs_make
def test_make_venv_installs_the_course_jupyter_settings(tmp_path):
    out = _dry_run(tmp_path)
    assert re.search(r"^cp -R jupyter-config/etc jupyter-config/share \S+/venv/$", out, re.M), out
    post = (ROOT / "postBuild").read_text()
    assert "cp -R jupyter-config/etc jupyter-config/share" in post, "Binder must use them too"


def test_jupyter_settings_turn_off_news_and_cull_idle_kernels():
    config = ROOT / "jupyter-config"
    server = json.loads((config / "etc/jupyter/jupyter_server_config.json").read_text())
    kernels = server["MappingKernelManager"]
    assert 0 < kernels["cull_idle_timeout"] <= 3600 and kernels["cull_connected"] is True
    lab = json.loads(
        (config / "share/jupyter/lab/settings/overrides.d/flowcourse.json").read_text()
    )
    assert lab["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


# ---------------------------------------------------------------------------------------------
# make lab, for real: a server on a free port, asked for exercises/ through the contents API.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@needs_make
def test_make_lab_serves_the_repository_and_applies_the_course_settings(tmp_path):
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("no .venv: `make lab` would first create it (run `make venv`)")
    port, token = _free_port(), "flowcourse-test"
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "lab", f"LAB_ARGS={args}"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make and jupyter stop together
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, listing = time.monotonic() + 120, None
        while listing is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                listing = _get(f"{base}/api/contents/exercises?token={token}")
            except urllib.error.HTTPError as exc:
                pytest.fail(
                    f"make lab's server answers {exc.code} for exercises/:\n{log.read_text()}"
                )
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert listing is not None, f"make lab did not serve on port {port}:\n{log.read_text()}"
        served = sorted(item["name"] for item in listing["content"])
        expected = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
        assert expected and set(expected) <= set(served), served
        root = _get(f"{base}/api/contents?token={token}")
        assert {"notebooks", "exercises"} <= {item["name"] for item in root["content"]}
        first = sorted((ROOT / "notebooks").glob("*.ipynb"))[0].relative_to(ROOT).as_posix()
        assert f"/lab/tree/{first}" in log.read_text(), "notebook 01 should open first"
        plugin = "@jupyterlab/apputils-extension:notification"
        news = _get(f"{base}/lab/api/settings/{plugin}?token={token}")
        assert news["schema"]["properties"]["fetchNews"]["default"] == "false"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    shown = subprocess.run(
        [ROOT / ".venv" / "bin" / "jupyter", "server", "--show-config"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert re.search(r"MappingKernelManager\n(  \..*\n)*  \.cull_idle_timeout = 1200", shown), shown


@needs_make
def test_make_lab_opens_the_first_lesson_and_keeps_lab_args(tmp_path):
    out = subprocess.run(
        ["make", "-n", "lab", "LAB_ARGS=--ServerApp.root_dir=.", f"VENV={ROOT / '.venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if "jupyter lab" in ln)
    first = sorted((ROOT / "notebooks").glob("*.ipynb"))[0].relative_to(ROOT).as_posix()
    assert f"--LabApp.default_url=/lab/tree/{first}" in line, line
    # One root_dir at most: the user's (a second one fails: "root_dir only accepts one value").
    assert line.count("root_dir") == 1, line


# ---------------------------------------------------------------------------------------------
# The doctor names the torch build and what it weighs.


def test_doctor_reports_the_torch_build_and_its_size(capsys):
    import torch

    assert doctor.main() == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "torch build" in ln)
    expected = "CPU" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
    assert f"torch build {expected} ({torch.__version__})" in line, line
    size = float(re.search(r"([\d.]+) GB on disk", line).group(1))
    on_disk = sum(f.stat().st_size for f in Path(torch.__file__).parent.rglob("*") if f.is_file())
    assert size == pytest.approx(on_disk / 1e9, rel=0.1), (size, on_disk)


@pytest.mark.parametrize(
    ("cuda", "hip", "expected"),
    [(None, None, "CPU"), ("12.6", None, "CUDA 12.6"), (None, "6.2", "ROCm 6.2")],
)
def test_torch_build_names(cuda, hip, expected):
    assert doctor.torch_build(cuda, hip) == expected


def _fake_dist(tmp_path: Path, name: str, sizes: dict[str, int]) -> metadata.Distribution:
    info = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = []
    for rel, size in sizes.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        record.append(f"{rel},,{size}")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return metadata.PathDistribution(info)


def test_torch_footprint_counts_the_cuda_libraries_apart(tmp_path, monkeypatch, capsys):
    dists = [
        _fake_dist(tmp_path, "torch", {"torch/a.so": 3000, "torch/b.py": 500}),
        _fake_dist(tmp_path, "nvidia-cublas", {"nvidia/cublas/lib.so": 7000}),
        _fake_dist(tmp_path, "triton", {"triton/t.so": 1000}),
        _fake_dist(tmp_path, "numpy", {"numpy/n.so": 9999}),
    ]
    monkeypatch.setattr(doctor.metadata, "distributions", lambda: iter(dists))
    assert doctor.torch_footprint() == (3500, 8000)
