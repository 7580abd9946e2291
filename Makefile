# The two commands of the quick start: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -q -c constraints.txt -e '.[test,beam,tpu]'
	touch $(STAMP)

demo: install
	$(BIN)/scone-jax demo --out $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
