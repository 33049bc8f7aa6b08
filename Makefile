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

# The comparison protocol (docs/RESULTS.md) on hard AV-MNIST: every method tuned on
# validation, then on 5 fresh seeds beside its defaults. DATA: where the prepared datasets are
# (data/avmnist_hard); FSDD, MNIST: the raw data to prepare it from when it is missing
# (docs/DATA.md). Other tables: make results TABLES=methods,epochs,window,fusion,beta,threshold
TABLES ?= tuned
DATASETS ?= avmnist_hard
DATA ?= data
FSDD ?=
MNIST ?=
results: $(STAMP)
	$(PY) -m experiments.results --tables=$(TABLES) --datasets=$(DATASETS) --data_root=$(DATA) \
	    --fsdd_dir=$(FSDD) --mnist_dir=$(MNIST) --jobs=2

clean:
	rm -rf $(VENV) runs
