# The release flow, included by the Makefile (`-include release.mk`). Each step is one edgekit
# command, and make stops at the first that fails:
#
#   1. build      edgekit build --target T           (one per target; host accuracy checks inside)
#   2. host       edgekit deploy --device HOST_DEVICE  then  edgekit validate --device HOST_DEVICE
#                 (HOST_DEVICE is a transport = "local" device: the bundle validated on this machine)
#   3. canary +   edgekit deploy --group GROUP --canary CANARY
#   4. promote    (CANARY devices first, validated on the device; a failure rolls them back and
#                 stops; otherwise the rest of GROUP follows in batches of deploy.max_parallel)
#   5. report     edgekit report --out REPORTS --fail-on-failure   (HTML, Markdown, JSON from the run
#                 files and the release log; also written when step 3-4 fails, so a rolled-back canary
#                 is on record; exits non-zero when a device's current release fails)
#
#   make release CONFIG=samples/digits/edgekit.toml TARGETS="x86-avx512-vnni raspberry-pi-5" GROUP=fleet CANARY=1
#
# Variables (all overridable): CONFIG, TARGETS (empty: the config's `targets` list), GROUP, CANARY,
# HOST_DEVICE (empty: skip step 2), INVENTORY (an Ansible inventory adding devices), REPORTS (default:
# reports/ beside CONFIG, like runs/, wherever make is run from), EDGEKIT.

CONFIG      ?= edgekit.toml
TARGETS     ?=
GROUP       ?= all
CANARY      ?= 1
HOST_DEVICE ?= local
INVENTORY   ?=
EDGEKIT     ?= $(if $(BIN),$(BIN)/edgekit,edgekit)

CONFIG_DIR  := $(patsubst %/,%,$(dir $(CONFIG)))
RUNS        ?= $(CONFIG_DIR)/runs
REPORTS     ?= $(CONFIG_DIR)/reports
REPORT_CMD   = $(EDGEKIT) report --runs-dir $(RUNS) --out $(REPORTS) --fail-on-failure
INV_FLAG    := $(if $(INVENTORY),--inventory $(INVENTORY))

.PHONY: release release-build release-host release-fleet release-report

release: release-build release-host release-fleet release-report

release-build: $(STAMP)
	@echo "== release 1/5: build $(or $(TARGETS),the targets listed in $(CONFIG))"
ifeq ($(strip $(TARGETS)),)
	$(EDGEKIT) build --config $(CONFIG)
else
	$(foreach t,$(TARGETS),$(EDGEKIT) build --config $(CONFIG) --target $(t)$(newline))
endif

release-host: release-build
ifneq ($(strip $(HOST_DEVICE)),)
	@echo "== release 2/5: validate on the host (device $(HOST_DEVICE))"
	$(EDGEKIT) deploy --config $(CONFIG) $(INV_FLAG) --device $(HOST_DEVICE)
	$(EDGEKIT) validate --config $(CONFIG) --device $(HOST_DEVICE) --runs-dir $(RUNS)
else
	@echo "== release 2/5: host validation skipped (HOST_DEVICE is empty)"
endif

release-fleet: release-host
	@echo "== release 3-4/5: canary ($(CANARY) device(s), validated on the device), then the rest of group $(GROUP)"
	$(EDGEKIT) deploy --config $(CONFIG) $(INV_FLAG) --group $(GROUP) --canary $(CANARY) || \
	  { echo "== release 5/5: report of the failed rollout"; $(REPORT_CMD); exit 1; }

release-report: release-fleet
	@echo "== release 5/5: report"
	$(REPORT_CMD)

define newline


endef
