# Two commands on a fresh machine: `make train` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet -e '.[dev,sweep,slurm,ray,bench,notebook]'
	touch $(STAMP)

# Extra overrides: make train ARGS="activation=tanh trainer.max_epochs=5"
train: $(STAMP)
	$(VENV_PYTHON) train.py $(ARGS)

test: $(STAMP)
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV_PYTHON) -m ruff check mlpkit scripts tests train.py

clean:
	rm -rf outputs multirun .pytest_cache
