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
	$(PY) -m pytest -n 2 --durations=25 tests

mutate: $(STAMP)
	$(PY) -m tests.mutate

# Protocol v2 (docs/RESULTS.md) on hard AV-MNIST: Tables 2 and 3 over the six speaker folds
# (every method tuned on a validation speaker, then its chosen setting and its defaults on 5
# seeds a fold), then Table 4. DATA: where the prepared folds are (data/avmnist_hard_fold<K>);
# FSDD, MNIST: the raw data they are prepared from when missing, and the test pairs' recordings
# replayed from (the recording-level bootstrap; docs/DATA.md). Continues from
# the committed records (docs/results/avmnist_hard/records). Other tables: TABLES=epochs,
# fusion,beta,threshold; FOLDS=0 for one fold.
TABLES ?= tuned,window
DATASETS ?= avmnist_hard
DATA ?= data
FSDD ?=
MNIST ?=
FOLDS ?=
results: $(STAMP)
	$(PY) -m experiments.results --tables=$(TABLES) --datasets=$(DATASETS) --data_root=$(DATA) \
	    --fsdd_dir=$(FSDD) --mnist_dir=$(MNIST) --folds=$(FOLDS) --jobs=2

clean:
	rm -rf $(VENV) runs
