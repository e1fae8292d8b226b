# flowcourse: the two commands of the README, and a few for authors.
#   make lab    set up .venv (first time only) and open the course in JupyterLab
#   make test   set up .venv (first time only) and run every test
# Authors: make execute [NB=notebooks/02_affine_flow.ipynb], make release, make bench, make lint.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The venv's own kernel spec must win over any user-level "python3" kernel.
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
export PYTHONHASHSEED := 0
LAB_ARGS ?=
NB ?=

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
         --nbval-cell-timeout=600 -p no:cacheprovider

.PHONY: lab test venv check-python lint execute release bench doctor clean

# Containers often run as root, which Jupyter refuses without being told.
ROOT_FLAG := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

lab: venv
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(ROOT_FLAG) $(LAB_ARGS)

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m flowcourse release --check
	$(BIN)/pytest -q tests -n 2
	$(BIN)/pytest -q $(NBVAL) -n 2 --dist loadscope notebooks solutions

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml | check-python
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
