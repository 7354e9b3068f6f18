# pix2pix-lit: `make train` (installs, then trains on the built-in data), `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install train test test-fast lint bench clean

install: $(BIN)/pix2pix-lit

$(BIN)/pix2pix-lit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

train: install
	$(BIN)/pix2pix-lit fit -c configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q -ra --durations=20

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check pix2pix_lit tests experiments

bench: install
	$(BIN)/python experiments/bench.py

clean:
	rm -rf runs data/synthetic .pytest_cache
