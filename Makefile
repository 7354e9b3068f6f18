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

# one worker per core (pytest-xdist), one file per worker at a time (module fixtures built once); tests/conftest.py
# gives each worker one compute thread so they share the cores instead of oversubscribing them
test: install
	$(BIN)/python -m pytest -q -ra --durations=20 -n auto --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile

lint: install
	$(BIN)/ruff check pix2pix_lit tests experiments
	$(BIN)/lint-imports  # the import contracts of pyproject.toml: layers, no cycles

bench: install
	$(BIN)/python experiments/bench.py

clean:
	rm -rf runs data/synthetic .pytest_cache
