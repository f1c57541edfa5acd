# Two commands a researcher needs (README): `make repro` and `make test`; `make lint` for contributors.
# Each creates .venv and installs the project into it on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: on our CPU machines pip takes the local CPU wheel, elsewhere
# PyPI's default (CUDA on Linux x86_64). Override with `make TORCH='torch==2.x' ...`.
TORCH  ?= torch==2.13.0

.PHONY: install system-packages repro test test-unit lint gpu-check clean-venv

# The rest with uv, which installs the project's ~150 packages in seconds where pip takes over a
# minute; torch stays pip's: uv does not look for the local wheel, and with torch installed first it
# installs no other. --compile-bytecode as pip does: with PYTHONDONTWRITEBYTECODE set (as on our
# machines) nothing else writes the .pyc files, and every process would compile dvc's and pandas's
# sources again.
UV     ?= uv>=0.13,<0.14

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip '$(UV)'
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $@

install: $(BIN)/.installed system-packages

# Debian packages some tests use; a test whose tool is missing skips, saying why. dicom3tools and
# dcmtk (dciodvfy, dcmdump) validate the phantom's DICOM files; slurm-wlm and munge run the private
# one-node Slurm of the `nodule-net grid --slurm` test (tools/slurm_cluster.py starts and stops its
# own daemons). Installed with apt-get where we can: as root on Debian/Ubuntu, saying what and why
# first; Slurm only where no systemd runs (a container, CI), since there the packages' system services
# would start at once and at every boot. `make install SYSTEM_PACKAGES=no` installs none of them.
SYSTEM_PACKAGES ?= yes
DICOM_PACKAGES  := dicom3tools dcmtk
SLURM_PACKAGES  := slurm-wlm munge

system-packages:
	@if [ "$(SYSTEM_PACKAGES)" = no ]; then \
	  echo "SYSTEM_PACKAGES=no: not installing $(DICOM_PACKAGES) $(SLURM_PACKAGES); the tests that need them skip."; \
	  exit 0; \
	fi; \
	want=""; why=""; \
	if ! command -v dciodvfy >/dev/null || ! command -v dcmdump >/dev/null; then \
	  want=" $(DICOM_PACKAGES)"; why="dciodvfy and dcmdump validate the phantom's DICOM files"; \
	fi; \
	if ! command -v sbatch >/dev/null || ! PATH="$$PATH:/usr/sbin" command -v slurmctld >/dev/null \
	    || ! PATH="$$PATH:/usr/sbin" command -v munged >/dev/null; then \
	  if [ -d /run/systemd/system ]; then \
	    echo "note: not installing $(SLURM_PACKAGES) (systemd would start and enable their services); the Slurm test skips."; \
	  else \
	    want="$$want $(SLURM_PACKAGES)"; why="$${why:+$$why; }the \`nodule-net grid --slurm\` test runs a private Slurm"; \
	  fi; \
	fi; \
	if [ -z "$$want" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make install: apt-get install$$want, for the tests ($$why); skip with \`make install SYSTEM_PACKAGES=no\`."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$want >/dev/null) \
	    || echo "note: apt-get could not install$$want; the tests that need them skip."; \
	else \
	  echo "note: missing Debian packages$$want (installed here only as root with apt-get); the tests that need them skip."; \
	fi

# The main job: the whole DVC pipeline on the embedded phantom. Stage commands call
# `python`, so the venv goes first on PATH (as after `source .venv/bin/activate`). params.yaml is
# checked first: DVC reads it into dvc.yaml before any stage runs, and its messages (`folds: 5`,
# an empty file) never name the key; check-params's one line does (docs/parameters.md).
repro: install
	$(BIN)/nodule-net check-params
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The suite over every core (pytest-xdist), a test file per worker at a time (tests/conftest.py puts each
# file in an xdist group, the Slurm files in one), so that a module's fixtures (a DVC repository,
# trained folds) are built once; tests/conftest.py also starts the slowest files first.
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The unit tests alone (no DVC, no stage subprocess, nothing over about a second): under a minute.
test-unit: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not integration"

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
