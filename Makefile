# Every target creates .venv on demand; `make run` needs nothing but Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: run test test-fast train streamqa-l bench sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.full: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[train,mic,webrtc,dev]'
	touch $@ $(VENV)/.runtime

sysdeps:
	bash scripts/sysdeps.sh

run: $(VENV)/.runtime
	$(BIN)/streamqa monitor --demo

test: sysdeps $(VENV)/.full
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.full
	$(BIN)/python -m pytest -q -m "not slow"

# Reproduce the shipped students from scratch: data, teacher labels, training, export, card.
train: sysdeps $(VENV)/.full
	$(BIN)/python -m train.pipeline --out runs/release --clips 28500 --festival-clips 4400 \
		--real-clips train=4000,val=500,test=900 --no-speech-clips train=1000,val=120,test=200 \
		--mild-clips train=2500 --music-clips train=600,val=60 --hard-no-speech train=3000 --converted-clips 4800 \
		--students s --epochs 12 --warp 0.1 --balance-voices --balance-cap 60 --real-share 0.53 --dropout 0.1 --presence-refit train=9000,val=400 --presence-keep 0.998 \
		--train-threads 1 --ship s

# Rebuild streamqa-l (Distill-MOS pruned to 23.8 %, docs/compression.md "Shipping it as
# streamqa-l"): eight train.prune runs, each skipped once its checkpoint exists, then the
# export, its check against torch, the test-split evaluation and the card. About 5 h of one
# core; needs the labeller's audio cache (make train). Plan: python -m train.prune_recipe --dry-run
PRUNE_OUT ?= runs/prune
PRUNE_LABELS ?= train/labels/train.distillmos.csv train/labels/train.real.distillmos.csv
PRUNE_THREADS ?= 1
streamqa-l: $(VENV)/.full
	$(BIN)/python -m train.prune_recipe --out $(PRUNE_OUT) --labels $(PRUNE_LABELS) --threads $(PRUNE_THREADS) --ship

# The reference runs behind docs/results.md (each writes JSON and prints a table).
R := benchmarks/results
bench: sysdeps $(VENV)/.full
	$(BIN)/python -m benchmarks.speed --json $(R)/speed.json
	$(BIN)/python -m benchmarks.monotonicity --clips 6 --json $(R)/monotonicity.json
	$(BIN)/python -m benchmarks.speech_presence --json $(R)/speech_presence.json
	$(BIN)/python -m benchmarks.real_voices streamqa-s=streamqa/models/streamqa-s.onnx --labels train/labels/test.distillmos.csv train/labels/test.real.distillmos.csv --json $(R)/real_voices.json
	$(BIN)/python -m benchmarks.rtp_degradation --json $(R)/rtp_degradation.json
	$(BIN)/python -m benchmarks.latency4 --json $(R)/latency4.json
	$(BIN)/python -m benchmarks.hop_cost --json $(R)/hop_cost.json
	$(BIN)/python -m benchmarks.fuzz_rtp --inputs 1000000 --json $(R)/fuzz_rtp.json
	$(BIN)/python -m benchmarks.fuzz_rtcp --inputs 1000000 --json $(R)/fuzz_rtcp.json
	$(BIN)/python -m benchmarks.hostile_network --json $(R)/hostile_network.json
	$(BIN)/python -m benchmarks.capture_speed --streams 20 --seconds 600 --json $(R)/capture_speed.json
	$(BIN)/python -m benchmarks.opus_concealment --json $(R)/opus_concealment.json
	$(BIN)/python -m benchmarks.streaming --search --scorer both --json $(R)/streaming.json
	$(BIN)/python -m benchmarks.compression --json $(R)/compression.json --plots $(R) --markdown docs/compression.md

clean:
	rm -rf $(VENV) cache runs
