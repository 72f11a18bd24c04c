# The entry points README.rst names: `make demo`, `make test`, `make docs`,
# `make bench`. Each installs what it needs into a virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast docs bench mutants clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q -e ".[$*]"
	touch $@

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-test
	$(BIN)/skseg demo --output skseg-demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (whole command-line runs, clusters,
# processes importing torch, model families): for the edit-test loop. Two
# pytest-xdist workers: the tests run torch (and scikit-learn's K-means in
# test_segmenter and test_label_store) at one thread, so each takes a core.
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_segmenter.py
	$(BIN)/python benchmarks/bench_metrics.py

# Mutation testing of the stage modules ([tool.mutmut] in pyproject.toml);
# `$(BIN)/mutmut results` lists the survivors, `$(BIN)/mutmut show NAME` one.
mutants: $(VENV)/.installed-test $(VENV)/.installed-dev
	$(BIN)/mutmut run --max-children 2

clean:
	rm -rf mutants $(VENV) docs/_build docs/auto_examples docs/gen_modules skseg-demo
