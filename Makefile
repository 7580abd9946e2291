# The two commands of the quick start: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: install demo lint test test-fast clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -q -c constraints.txt -e '.[test,beam,tpu,seqio,plots]'
	touch $(STAMP)

demo: install
	$(BIN)/scone-jax demo --out $(DEMO_DIR)

# ruff.toml: syntax errors, pyflakes, import order, bugbear. Runs first in both test targets.
lint: install
	$(BIN)/ruff check scone_jax tests launch

test: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The tests not marked slow (no subprocesses, paper-size compiles or long training): < 3 min on 2 cores.
test-fast: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
