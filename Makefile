# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run check test lint install clean mutate results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.run --resume  # a second `make run` finishes or re-reports the first

lint: $(STAMP)
	$(PY) -m ruff check .

# The quick tier (80 s on 2 cores): ruff and the tests not marked slow (tests/conftest.py).
check: lint
	$(PY) -m pytest -n 2 -m "not slow" tests

# The full suite, what CI runs (.ci/run): ruff and every test.
test: lint
	$(PY) -m pytest -n 2 tests

mutate: $(STAMP)
	$(PY) -m tests.mutate

TABLES ?= methods
# Tables 2/3 on AV-MNIST (prepared from ../shared/data) and the synthetic data; the others by
# name: make results TABLES=options,epochs,window,fusion,beta,threshold
results: $(STAMP)
	$(PY) -m experiments.results --tables=$(TABLES) --datasets=avmnist,synthetic --jobs=2

clean:
	rm -rf $(VENV) runs
