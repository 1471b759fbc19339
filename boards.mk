# Emulated ARM boards (tools/boards; as root): arm64 Debian userlands under qemu-user, reached over
# SSH on loopback as emu-pi5 (Cortex-A76), emu-pi4 (Cortex-A72) and emu-bullseye (Python 3.9,
# onnxruntime 1.19). The root filesystems are built once (~6 min) into ~/.cache/edgekit/boards
# ($EDGEKIT_BOARDS_CACHE) and reused; `make boards` on a warm cache takes seconds.
BOARDS_PY  := tools/boards/boards.py
BOARDS_CFG := edgekit.boards.toml
BOARDS_RUNS := runs/emu-pi5

.PHONY: boards boards-down boards-status demo-arm

boards: $(STAMP)
	$(BIN)/python $(BOARDS_PY) up

# Standard library only, so it works without the venv (and in a CI trap after a failed install).
boards-down:
	$(PYTHON) $(BOARDS_PY) down

boards-status:
	$(PYTHON) $(BOARDS_PY) status

# digits built for raspberry-pi-5 on this host, deployed to emu-pi5 over SSH and validated there by
# onnxruntime's ARM kernels. Its latency is qemu's, labelled "emulated, not representative".
demo-arm: $(STAMP) $(DIGITS)/data/digits.pt
	$(BIN)/python $(BOARDS_PY) project $(DIGITS)
	cd $(DIGITS) && ../../$(BIN)/edgekit build --config $(BOARDS_CFG) --target raspberry-pi-5
	cd $(DIGITS) && ../../$(BIN)/edgekit deploy --config $(BOARDS_CFG) --device emu-pi5
	cd $(DIGITS) && ../../$(BIN)/edgekit doctor --config $(BOARDS_CFG) --device emu-pi5
	cd $(DIGITS) && ../../$(BIN)/edgekit validate --config $(BOARDS_CFG) --device emu-pi5 --duration 1 --runs-dir $(BOARDS_RUNS)
	cd $(DIGITS) && ../../$(BIN)/edgekit report --runs-dir $(BOARDS_RUNS) --out reports/emu-pi5
	cat $(DIGITS)/reports/emu-pi5/report.md
