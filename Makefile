# Every target installs what it needs first, so each works on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, with the exact pin: on our machines it resolves to a local CPU build, while an
# unpinned torch pulled in by a dependency would download GBs of CUDA packages.
TORCH  ?= torch==2.13.0
EXTRAS ?= offline,serve,track,lora,datasets,postgres,dev

.PHONY: install browser postgres demo test test-fast test-numerics test-slow lint format clean

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
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: install
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

# The README's test command (and CI's): lint, the default suite, the float-sensitive tests once more on torch's
# non-vectorized kernels, then the slow suite.
test: test-fast test-numerics test-slow

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" -q

# Tests marked `numerics` (slow ones too) compare results that two code paths sum in another order. Rerun on torch's
# scalar CPU kernels, whose summation order differs from AVX2/AVX-512's, a tolerance that only held for this CPU's
# vector kernels fails here, not on the next machine.
test-numerics: install
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -m numerics -q

test-slow: install browser postgres
	$(BIN)/python -m pytest -m "slow" -q

# The browser tests (marker `browser`, part of the slow suite) drive Debian's chromium. Installed here when missing
# and this user may run apt-get; otherwise those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium ) >/dev/null 2>&1 \
	    && echo "installed chromium for the browser tests" \
	    || echo "WARNING: could not install chromium (apt-get install chromium); the browser tests will be skipped"; }

# The distributed-sweep tests (marker `postgres`, part of the slow suite) start their own PostgreSQL server in a
# temporary folder with Debian's initdb/pg_ctl (/usr/lib/postgresql/<version>/bin). Installed here when missing and
# this user may run apt-get; otherwise those tests are skipped and say why.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends postgresql ) >/dev/null 2>&1 \
	    && echo "installed postgresql for the distributed-sweep tests" \
	    || echo "WARNING: could not install postgresql (apt-get install postgresql); the postgres tests will be skipped"; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-output
