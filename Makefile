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

.PHONY: install demo test bench proto clean

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

# Regenerate shared/control_pb2.py, .pyi and control_pb2_grpc.py from shared/control.proto.
# grpcio-tools 1.76.0 bundles protoc 31.1. Its Python code needs protobuf 6.31.1 or a later 6.x
# release (the check in protobuf 6.33's runtime_version.py), and its gRPC stub needs grpcio 1.76.0
# or later. grpcio-tools is needed only here, so it is not a runtime dependency. Compiling a copy
# under lmeraser/shared/ makes the stub import `from lmeraser.shared import control_pb2`.
GRPCIO_TOOLS_VERSION ?= 1.76.0

proto: install
	$(BIN)/pip install --quiet 'grpcio-tools==$(GRPCIO_TOOLS_VERSION)'
	tmp=$$(mktemp -d) && mkdir -p $$tmp/lmeraser/shared && cp shared/control.proto $$tmp/lmeraser/shared/ && \
	$(BIN)/python -m grpc_tools.protoc -I $$tmp --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp \
		$$tmp/lmeraser/shared/control.proto && \
	cp $$tmp/lmeraser/shared/control_pb2.py $$tmp/lmeraser/shared/control_pb2.pyi \
		$$tmp/lmeraser/shared/control_pb2_grpc.py shared/ && \
	rm -rf $$tmp

clean:
	rm -rf lmeraser-state bench-results .pytest_cache
