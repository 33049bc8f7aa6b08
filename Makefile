# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean mutate results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.run --resume  # a second `make run` finishes or re-reports the first

test: $(STAMP)
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
