"""The pinned environment is named once and mirrored exactly; the nbval harness is intact."""

import re
from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip().lstrip("- ").strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m[1].lower()] = m[2]
    return pins


def _requirements():
    return _pins((ROOT / "requirements.txt").read_text().splitlines())


def _environment_yml():
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    return text, _pins(pip_section.splitlines())


def test_requirements_pin_every_line_exactly():
    lines = [
        ln.split("#")[0].strip()
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.split("#")[0].strip()
    ]
    loose = [ln for ln in lines if "==" not in ln]
    assert not loose, f"requirements.txt must pin exact versions, these are loose: {loose}"
    assert _requirements()["torch"] == "2.13.0"


def test_environment_yml_names_the_same_versions_as_requirements():
    text, env = _environment_yml()
    req = _requirements()
    assert env == req, (
        "environment.yml and requirements.txt disagree: "
        f"only in requirements {sorted(set(req.items()) - set(env.items()))}, "
        f"only in environment.yml {sorted(set(env.items()) - set(req.items()))}"
    )
    assert re.search(r"^\s*-\s*python=3\.11\s*$", text, re.M), (
        "environment.yml must pin python=3.11"
    )
    assert "conda-forge" in text


def test_pyproject_ranges_admit_the_pins():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _requirements()
    for spec in project["dependencies"]:
        req = Requirement(spec)
        pinned = pins.get(req.name.lower())
        assert pinned is not None, f"{req.name} is a dependency but not pinned in requirements.txt"
        assert req.specifier.contains(pinned), f"pyproject says {spec}, pin is {pinned}"


def test_binder_post_build_installs_the_package():
    post = (ROOT / "postBuild").read_text()
    assert "pip install" in post and "-e ." in post
    assert not (ROOT / "binder").exists(), "a binder/ folder would make Binder ignore root files"


def test_sanitize_file_parses_to_every_pattern_it_declares():
    text = (ROOT / "tests" / "nbval_sanitize.cfg").read_text()
    declared = len(re.findall(r"^regex:", text, re.M))
    parsed = get_sanitize_patterns(text)
    assert declared == 5, "update this count when you add a sanitize pattern"
    assert len(parsed) == declared, (
        f"{declared} 'regex:' lines but only {len(parsed)} regex/replace pairs parse: "
        "each 'regex:' line must be followed directly by its 'replace:' line"
    )
    for regex, _ in parsed:
        re.compile(regex)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<Figure size 512x320 with 1 Axes>", "<Figure>"),
        ("at 0x7f3a2b1c9d40>", "at 0xADDRESS>"),
        ("fit:   0%|          | 0/300 [00:00<?, ?it/s]", "[progress bar]"),
        (
            "fit (stopped early at step 90): 30%|###   | 90/300 [00:01<00:02, 9it/s, loss=1.2]",
            "[progress bar]",
        ),
        (
            "diagonal (stopped early at step 1200):  28%|██▊       | 1120/4000 "
            "[00:41<01:45, 27.18it/s, loss=17.8450, val=19.5035]",
            "[progress bar]",
        ),
        ("elapsed [00:03<00:00,  5.9it/s]", "elapsed [TIME]"),
        ("trained in 12.3 s (wall)", "trained in SECONDS (wall)"),
    ],
)
def test_sanitize_patterns_do_what_they_say(text, expected):
    patterns = get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text())
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    assert text == expected


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)
