# Two entry points for a fresh clone: `make repro` and `make test`.
# Both create .venv from the pinned requirements first if it is missing or stale.

# torch==2.13.0 is a CPython 3.11 wheel: prefer that interpreter when it exists.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Builds the editable install of this package (its console scripts) without build isolation, so offline
# once installed. Python 3.11's venv ships setuptools 65.5, which cannot build it without `wheel`.
SETUPTOOLS := setuptools==84.2.1
# dvc's experiment queue worker calls `dvc` from PATH, so the venv goes first on it.
export PATH := $(BIN):$(PATH)

.PHONY: exp-show search repro test test-fast venv lock clean-venv bench ablation corpora scale queue-threads peers serve

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt "$(SETUPTOOLS)"
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# `python -m pipeline.params` first: the keys, and the paths DVC would hang on (a FIFO, a device) or a
# stage would overwrite; then again, to remove the resume state of a training the run cache replaced.
repro: $(STAMP)
	python -m pipeline.params
	dvc repro
	@python -m pipeline.params >/dev/null

# Every test (the README's test command, and CI's). Without Chromium the browser checks are skipped with
# the reason, except where CI=true: there they fail (.ci/run installs Debian's chromium).
test: $(STAMP)
	python -m pytest

# The tests marked `slow` left out (DVC runs, whole stages, torchrun, the browser): for development.
test-fast: $(STAMP)
	python -m pytest -m "not slow"

# The trained model over HTTP on 127.0.0.1:8000, with a page at / (docs/serving.md); options in ARGS="...".
serve: $(STAMP)
	textclf-serve $(ARGS)

bench: $(STAMP)
	python -m benchmarks.embeddings
	python -m benchmarks.training

# The README's ablation table, through DVC's experiment queue (commit first: queued runs see only git).
ablation: $(STAMP)
	python -m benchmarks.ablation

# The README's real-corpora table: each benchmarks/corpora/*.yaml through the DVC queue (commit first).
corpora: $(STAMP)
	python -m benchmarks.corpora --seeds 42 43 44

# The README's scale table: each stage on 10k, 100k and 1M synthetic documents (needs `make repro` first).
scale: $(STAMP)
	python -m benchmarks.scale

# The README's queue table: two trainings at once through `dvc queue start -j 2` (commit first).
queue-threads: $(STAMP)
	python -m benchmarks.queue_threads

# `dvc exp show` in 120 columns: the headline metrics and the params that differ between experiments.
exp-show: $(STAMP)
	textclf-exp show --sort-by lstm_val_acc --sort-order desc

# A hyperparameter search, each trial a DVC experiment (commit first): make search ARGS="--trials 20 --seed 0".
search: $(STAMP)
	textclf-search $(ARGS)

# docs/peers.md: the LSTM beside flair and fastText on the pipeline's own splits (needs `make repro` first).
# The peers get their own virtual environment, so that the project's pinned requirements stay lean.
PEERS_VENV := benchmarks/.peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): benchmarks/peers-requirements.txt
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r benchmarks/peers-requirements.txt
	@touch $(PEERS_STAMP)

# Another README corpus: make peers CORPUS=reuters_r8 ARGS="--flair-seeds 1" (a clone with its params, run once).
CORPUS ?= builtin
peers: $(STAMP) $(PEERS_STAMP)
	python -m benchmarks.peers --corpus $(CORPUS) $(ARGS)

# Re-pin requirements.txt after editing requirements.in.
lock: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -r requirements.in
	( echo "# Generated from requirements.in with 'pip freeze' on Python 3.11 (see Makefile 'lock')."; \
	  $(VENV)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' ) > requirements.txt

clean-venv:
	rm -rf $(VENV)
