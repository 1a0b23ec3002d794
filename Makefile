# Set-up and everyday commands. Each target installs what it needs into $(VENV) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?=

# Keep Flower and Ray offline and on this machine.
export FLWR_DISABLE_UPDATE_CHECK = 1
export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: install demo test bench clean

$(BIN)/lmeraser: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --editable '.[test]'
	touch $@

install: $(BIN)/lmeraser

demo: install
	$(BIN)/lmeraser simulate

test: install
	$(BIN)/python -m pytest $(if $(DATA_DIR),--data-dir=$(DATA_DIR))

bench: install
	$(BIN)/python benchmarks/cifar10.py --data-dir $(or $(DATA_DIR),../shared/data) --seeds 0,1,2 \
		--set input-size=64 --set prompt-width=8 --set rounds=2 --set local-epochs=4 --set summary-k=2

clean:
	rm -rf lmeraser-state bench-results .pytest_cache
