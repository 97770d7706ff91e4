# Every target installs what it needs first, so each works on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, with the exact pin: on our machines it resolves to a local CPU build, while an
# unpinned torch pulled in by a dependency would download GBs of CUDA packages.
TORCH  ?= torch==2.13.0
EXTRAS ?= offline,serve,dev

.PHONY: install demo test test-fast test-slow lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/mmfuse demo --out demo-output

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# The README's test command (and CI's): lint, the default suite, then the slow suite.
test: test-fast test-slow

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install
	$(BIN)/python -m pytest -m "slow" -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-output
