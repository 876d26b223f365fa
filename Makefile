# Two commands on a fresh clone: `make demo` (the whole chain on the embedded data) and `make test`.
# Each creates .venv and installs what it needs: torch first, pinned to the CPU build, then the rest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test bench install clean

$(BIN)/llmpipe: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/llmpipe

demo: install
	$(BIN)/llmpipe run recipes/tiny.yaml

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/pretrain_throughput.py

clean:
	rm -rf runs .pytest_cache
