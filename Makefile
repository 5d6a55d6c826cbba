# Every target creates .venv on demand; `make run` needs nothing but Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: run test test-fast train bench labels sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.full: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[train,mic,dev]'
	touch $@ $(VENV)/.runtime

sysdeps:
	bash scripts/sysdeps.sh

run: $(VENV)/.runtime
	$(BIN)/streamqa monitor --demo

test: sysdeps $(VENV)/.full
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.full
	$(BIN)/python -m pytest -q -m "not slow"

# Reproduce the shipped students from scratch: data, teacher labels, training, export.
train: sysdeps $(VENV)/.full
	$(BIN)/python -m train.pipeline --out runs/release

labels: sysdeps $(VENV)/.full
	$(BIN)/python -m train.label --manifest cache/manifests/train.csv --out train/labels/train.csv

bench: sysdeps $(VENV)/.full
	$(BIN)/python -m benchmarks.compression --json benchmarks/results/compression.json
	$(BIN)/python -m benchmarks.streaming --json benchmarks/results/streaming.json

clean:
	rm -rf $(VENV) cache runs
