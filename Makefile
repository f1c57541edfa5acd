# Two commands a researcher needs (README): `make repro` and `make test`; `make lint` for contributors.
# Each creates .venv and installs the project into it on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: on our CPU machines pip takes the local CPU wheel, elsewhere
# PyPI's default (CUDA on Linux x86_64). Override with `make TORCH='torch==2.x' ...`.
TORCH  ?= torch==2.13.0

.PHONY: install dicom-tools repro test test-unit lint gpu-check clean-venv

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed dicom-tools

# dciodvfy (dicom3tools) and dcmdump (DCMTK) validate the phantom's DICOM files in the
# tests. Installed with apt-get where we can (root on Debian/Ubuntu); anywhere else, or if
# apt-get fails, the install goes on and those tests skip, saying why.
dicom-tools:
	@if command -v dciodvfy >/dev/null && command -v dcmdump >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools dcmtk >/dev/null) \
	    || echo "note: apt-get could not install dicom3tools and dcmtk; the DICOM validation tests will skip."; \
	else echo "note: dciodvfy or dcmdump missing (Debian packages dicom3tools, dcmtk); the DICOM validation tests will skip."; fi

# The main job: the whole DVC pipeline on the embedded phantom. Stage commands call
# `python`, so the venv goes first on PATH (as after `source .venv/bin/activate`).
repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest -q

# The unit tests alone (no DVC, no stage subprocess, nothing over about a second): under a minute.
test-unit: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# ruff and mypy, pinned in the `test` extra and configured in pyproject.toml (CI runs this first).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# On a machine with a CUDA GPU: the measurements and tests that a CPU cannot do (docs/speed.md:
# `python -m tools.gpu_check`). At most 9 minutes; results in gpu-check/
# (git-ignored). The phantom's dataset and folds come from `dvc repro split`.
gpu-check: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro split
	$(BIN)/python -m tools.gpu_check --out gpu-check

clean-venv:
	rm -rf $(VENV)
