# flowcourse: the two commands of the README, and a few for authors.
#   make lab    set up .venv (first time only) and open the course in JupyterLab
#   make test   set up .venv (first time only) and run every test (the site and its browser test too)
# Authors: make execute [NB=notebooks/02_affine_flow.ipynb], make release, make bench, make lint,
# make site.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The venv's own kernel spec must win over any user-level "python3" kernel.
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
export PYTHONHASHSEED := 0
LAB_ARGS ?=
NB ?=
# TORCH_INDEX=cpu takes torch's CPU build from PyTorch's own wheel index (the one environment.yml
# names) when .venv is created: on Linux, PyPI's torch is the CUDA build and brings its CUDA
# libraries (README: the download sizes). Any other value is used as an index URL. Default:
# PyPI alone, which is all some networks reach.
TORCH_INDEX ?=
TORCH_INDEX_URL := $(if $(filter cpu,$(TORCH_INDEX)),https://download.pytorch.org/whl/cpu,$(TORCH_INDEX))
PIP_TORCH := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
         --nbval-cell-timeout=600 -p no:cacheprovider

.PHONY: lab test venv check-python lint execute release bench doctor site clean

# Containers often run as root, which Jupyter refuses without being told.
ROOT_FLAG := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

# The server is rooted at the repository (the folder make runs in), so that notebooks/ and
# exercises/ both open; the first lesson opens first.
FIRST_LESSON := $(firstword $(sort $(wildcard notebooks/*.ipynb)))
lab: venv
	$(BIN)/jupyter lab --LabApp.default_url=/lab/tree/$(FIRST_LESSON) $(ROOT_FLAG) $(LAB_ARGS)

test: venv site
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m flowcourse release --check
	$(BIN)/pytest -q tests -n 2
	$(BIN)/pytest -q $(NBVAL) -n 2 --dist loadscope notebooks solutions

venv: $(VENV)/.installed $(VENV)/.jupyter-config

$(VENV)/.installed: requirements.txt pyproject.toml | check-python
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt $(PIP_TORCH)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# The course's Jupyter settings (jupyter-config/README.md), copied into the environment's prefix
# as Binder's postBuild does.
JUPYTER_CONFIG := $(shell find jupyter-config -name '*.json' 2>/dev/null)
$(VENV)/.jupyter-config: $(JUPYTER_CONFIG) | $(VENV)/.installed
	cp -R jupyter-config/etc jupyter-config/share $(VENV)/
	@touch $@

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "flowcourse needs Python 3.11, and '$(PYTHON)' was not found."; \
	  echo "Install it (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; macOS: brew install python@3.11;"; \
	  echo "any OS: pyenv install 3.11), or point make at one: make PYTHON=/path/to/python3.11 ..."; \
	  exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "flowcourse needs Python 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)."; \
	  echo "Install Python 3.11 and run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "'$(PYTHON)' has no venv support (the venv or ensurepip module is missing)."; \
	  echo "Install it (Debian/Ubuntu: apt-get install python3.11-venv) and run make again."; exit 1; }

lint: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

execute: venv
	$(BIN)/python -m flowcourse execute $(or $(NB),notebooks solutions)

release: venv
	$(BIN)/python -m flowcourse release

doctor: venv
	$(BIN)/python -m flowcourse doctor

# make bench [BENCH_ARGS="--only realnvp --seeds 0 1 2"]; see python -m benchmarks --help.
# normflows (requirements-bench.txt) is a benchmark-only extra, not a course dependency.
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	@touch $@

# The course as a website, from the stored outputs (nothing re-executed): build/site/html.
# Jupyter Book and the browser test's driver (requirements-site.txt) are site-only extras.
site: $(VENV)/.site-installed
	$(BIN)/python -m website

$(VENV)/.site-installed: requirements-site.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-site.txt -c requirements.txt
	@touch $@

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
