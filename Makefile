# Two commands: `make test` and `make bench`. Both create .venv on first use and reinstall
# the project whenever pyproject.toml changes (the stamp file is older than it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRESET ?= quick
DEVICE ?= auto
# A CPU-only torch wheel lying on local disk (as on this project's CI machines) is preferred:
# it installs in seconds, where a plain `pip install torch` may pull a multi-GB CUDA build.
# Override with `make test TORCH_WHEEL=` to let pip choose.
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: test bench lint install clean tiny anchors

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH_WHEEL)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install -q "$(TORCH_WHEEL)"; fi
	$(BIN)/pip install -q -e '.[hf,dev,notebooks,rag,serve,dp]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: lint
	MLCORE_QUICK=1 $(BIN)/python -m pytest tests -q
	MLCORE_QUICK=1 $(BIN)/python -m pytest --nbmake notebooks -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks --preset $(PRESET) --device $(DEVICE)

# Retrain the project's tiny target and draft models (about 7 minutes on 2 CPU cores) into
# src/mlcore/assets/tiny/; the committed ones were made by exactly this command.
tiny: $(STAMP)
	$(BIN)/python -m mlcore.training.pretrain --preset tiny --threads 1 --no-progress

# llama.cpp beside transformers and mlcore in `make bench` (benchmarks/anchors.py): installs the [anchors] extra,
# building llama-cpp-python from source for this CPU (CMAKE_ARGS=-DGGML_NATIVE=ON; 5-40 minutes on 2 cores).
# A wheel built earlier can be given instead: `make anchors LLAMA_CPP_WHEEL=/path/llama_cpp_python-*.whl`.
# Optional: `make test` and CI never need it (its tests skip cleanly without it).
LLAMA_CPP_WHEEL ?=
anchors: $(STAMP)
	if [ -n "$(LLAMA_CPP_WHEEL)" ]; then $(BIN)/pip install "$(LLAMA_CPP_WHEEL)"; fi
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip install --no-binary llama-cpp-python -e '.[anchors]'
	$(BIN)/python -c "import llama_cpp, gguf; print('llama.cpp', llama_cpp.__version__, '- enabled in make bench')"

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache
