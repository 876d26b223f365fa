# Two commands on a fresh clone: `make demo` (the whole chain on the embedded data) and `make test`.
# Each creates .venv and installs what it needs: torch first, pinned to the CPU build, then the rest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test dist catalogue docs bench bench-scale install clean

$(BIN)/llmpipe: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/llmpipe

demo: install
	$(BIN)/llmpipe run tiny

# Lint first (rules in pyproject.toml's [tool.ruff]): a finding fails in a second, before the tests' minutes.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The sdist and the wheel (embedded data and recipes inside) in dist/, built with this venv's setuptools.
dist: install
	$(BIN)/python -m build --no-isolation --outdir dist .

# Regenerate docs/bad-inputs.md from the bad-input catalogue (tests/bad_inputs_cases.py), by running it.
catalogue: install
	$(BIN)/python tests/make_catalogue.py

# Regenerate docs/manifest.md from the typed manifest's field declarations (llmpipe/runs/manifest.py).
docs: install
	$(BIN)/python -c "from llmpipe.runs.manifest import markdown; print(markdown(), end='')" > docs/manifest.md

# Each benchmark prints a table and writes JSON to bench/results/.
bench: install
	$(BIN)/python bench/stages.py
	$(BIN)/python bench/dedup_throughput.py
	$(BIN)/python bench/data_scale.py --quick

# Peak memory of pretraining on a 1 GB corpus against 10 MB (about 10 minutes, ~3 GB in /tmp).
bench-scale: install
	$(BIN)/python bench/data_scale.py

clean:
	rm -rf runs .pytest_cache build dist
