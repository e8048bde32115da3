# Two commands on a fresh machine: `make train` and `make test`.
# Both create .venv when it is missing. `make train` installs only what a run needs (the lean
# dependencies of pyproject.toml); `make test` adds the extras the suite tests (Optuna, the joblib,
# SLURM and Ray launchers, Lightning, the notebook tools, ONNX export, MLflow and W&B). Each install has its own stamp, so the
# second command installs only what the first did not.
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
TEST_EXTRAS := dev,sweep,slurm,ray,bench,notebook,export,mlflow,wandb

.PHONY: setup setup-test train test test-fast lint clean

setup: $(RUN_STAMP)

setup-test: $(TEST_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet -e .
	touch $(RUN_STAMP)

# The extras install the project too: a run's stamp is then up to date as well.
$(TEST_STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP) $(RUN_STAMP)

# Extra overrides: make train ARGS="activation=tanh trainer.max_epochs=5"
train: $(RUN_STAMP)
	$(VENV_PYTHON) train.py $(ARGS)

# The suite runs on every core (pytest-xdist), a test file per worker so that its shared trained runs
# are trained once; each worker and the processes it starts use one thread (OMP_NUM_THREADS=1): two
# workers of two threads each on two cores would fight over them.
TEST_WORKERS ?= auto
test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(VENV_PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The unit tests: no test that trains a real run or starts a process (those are marked slow), on
# every core as `make test` runs them.
test-fast: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(VENV_PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV_PYTHON) -m ruff check mlpkit scripts tests train.py

clean:
	rm -rf outputs multirun .pytest_cache
