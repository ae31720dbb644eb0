# Targets that build the enclave image and EIF and run it on a Nitro-enabled instance
# (docs/deploy.md). Every target says what is missing (docker daemon, nitro-cli,
# /dev/nitro_enclaves, build/measurements.json) instead of failing obscurely.
# Variables: IMAGE, BASE_IMAGE (any base with python3 3.11, e.g. the arm64 digest or the stand-in
# of `make base-image`), BASE_FALLBACK, DOCKER_BUILD_FLAGS, EIF, CPU, MEMORY (MiB), CID, DEBUG=1, ENCLAVE_NAME, REGION, ENCLAVE_ROLE, ADMIN, ENDPOINT_URL.

IMAGE        ?= nitro-toolkit-enclave:latest
EIF          ?= build/app.eif
MEASUREMENTS ?= build/measurements.json
KEY_POLICY   ?= build/key-policy.json
CPU          ?= 2
MEMORY       ?= 1024
CID          ?= 16
DEBUG        ?= 0
ENCLAVE_NAME ?= nitro-toolkit
REGION       ?= us-east-1
ENCLAVE_ROLE ?=
ADMIN        ?=
NITRO_CLI    ?= nitro-cli
# EIF builder (docs/eif-build.md): EIF_BUILDER=auto|python, BLOBS, ROOTFS_TAR + CMD_JSON (no daemon),
# EIF_BUILD_ARGS (e.g. --signing-key K --signing-cert C), COMMIT/SIGNING_CERT for `make reproduce`
EIF_BUILDER  ?= auto
BLOBS        ?= /usr/share/nitro_enclaves/blobs
ROOTFS_TAR   ?=
CMD_JSON     ?=
EIF_BUILD_ARGS ?=
COMMIT       ?=
SIGNING_CERT ?=
STATEMENT    ?=
BASE_IMAGE   ?=
BASE_FALLBACK ?= standin
WHEELS_DIR   ?= build/wheels
DOCKER_BUILD_FLAGS ?=
# the last commit's time: same commit => same file mtimes in the image => same PCR2
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DEBUG_FLAG    = $(if $(filter 1 yes true,$(DEBUG)),--debug-mode,)

.PHONY: image wheels base-image eif measurements run-enclave console describe terminate policy deploy-dry-run

define need_docker
	@command -v docker >/dev/null 2>&1 || { echo "make $@: the docker client is not installed (see https://docs.docker.com/engine/install/)."; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "make $@: no Docker daemon answers. Start it (sudo systemctl start docker) and make sure your user may use it (group docker)."; exit 2; }
endef

define need_nitro_cli
	@command -v $(NITRO_CLI) >/dev/null 2>&1 || { echo "make $@: nitro-cli is not installed. On Amazon Linux 2023: sudo dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel && sudo usermod -aG ne,docker \$$USER (then log in again). See docs/deploy.md."; exit 2; }
endef

define need_device
	@test -e /dev/nitro_enclaves || { echo "make $@: /dev/nitro_enclaves does not exist: this is not a parent instance with enclaves enabled. Launch a supported type (e.g. m6i.xlarge) with EnclaveOptions Enabled=true (make deploy-dry-run shows how) and enable nitro-enclaves-allocator.service."; exit 2; }
endef

define need_file
	@test -f $(1) || { echo "make $@: $(1) is missing: run 'make $(2)' first."; exit 2; }
endef

image: $(STAMP) ## docker build the enclave image, offline (Dockerfile.enclave, image/build.sh)
	$(need_docker)
	@$(MAKE) --no-print-directory -o $(STAMP) wheels
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) BASE_FALLBACK=$(BASE_FALLBACK) WHEELS_DIR=$(WHEELS_DIR) \
	  SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) DOCKER_BUILD_FLAGS="$(DOCKER_BUILD_FLAGS)" image/build.sh
	@echo "next: make eif"

# The wheels of the image for the daemon's architecture, fetched by hash on the host.
WHEEL_ARCH = $(shell docker info --format '{{.Architecture}}' 2>/dev/null || uname -m)
WHEEL_PLATFORMS = manylinux_2_28 manylinux_2_17 manylinux2014
WHEEL_REQS = enclave/requirements.txt image/build-requirements.txt

wheels: $(WHEELS_DIR)/.fetched-$(WHEEL_ARCH) ## fetch the image's wheels by hash into build/wheels

$(WHEELS_DIR)/.fetched-%: $(WHEEL_REQS) | $(STAMP)
	@mkdir -p $(WHEELS_DIR)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
	  --only-binary=:all: --implementation cp --python-version 3.11 \
	  $(foreach p,$(WHEEL_PLATFORMS),--platform $(p)_$*) -d $(WHEELS_DIR) $(addprefix -r ,$(WHEEL_REQS))
	@touch $@

base-image: ## make (or reuse) the stand-in base from Debian packages (no registry needed)
	$(need_docker)
	image/base-image.sh

eif: $(STAMP) ## build/app.eif + build/measurements.json: nitro-cli if present, else the Python builder (says which)
	@mkdir -p $(dir $(EIF)) $(dir $(MEASUREMENTS))
	@if [ "$(EIF_BUILDER)" != python ] && command -v $(NITRO_CLI) >/dev/null 2>&1; then \
	  echo "make eif: building with nitro-cli ($$(command -v $(NITRO_CLI)))"; \
	  $(MAKE) --no-print-directory eif-nitro-cli; \
	else \
	  echo "make eif: building with the Python builder (python -m parent eif build; blobs $(BLOBS))$(if $(filter python,$(EIF_BUILDER)),, because nitro-cli is not installed)"; \
	  $(MAKE) --no-print-directory eif-python; \
	fi
	$(PY) -m attestation pcrs --eif $(EIF) --check-measurements $(MEASUREMENTS) >/dev/null
	@echo "$(EIF) measured; our reader agrees with the builder. next: make policy / make run-enclave"

.PHONY: eif-nitro-cli eif-python reproduce

eif-nitro-cli: $(STAMP)
	$(need_nitro_cli)
	$(need_docker)
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || { echo "make eif: image $(IMAGE) not found: run 'make image' first."; exit 2; }
	$(PY) -m parent.nitro_cli --nitro-cli $(NITRO_CLI) build --docker-uri $(IMAGE) --output-file $(EIF) --measurements $(MEASUREMENTS)

eif-python: $(STAMP)
	@test -d $(BLOBS) || { echo "make eif: blobs directory $(BLOBS) is missing: set BLOBS=DIR (bzImage|Image, cmdline, init, nsm.ko; see docs/eif-build.md)."; exit 2; }
ifeq ($(ROOTFS_TAR),)
	$(need_docker)
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || { echo "make eif: image $(IMAGE) not found: run 'make image' first (or set ROOTFS_TAR=FILE CMD_JSON=...)."; exit 2; }
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PY) -m parent eif build --docker-image $(IMAGE) --blobs $(BLOBS) --output $(EIF) --measurements $(MEASUREMENTS) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE),) $(EIF_BUILD_ARGS) >/dev/null
else
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PY) -m parent eif build --rootfs-tar $(ROOTFS_TAR) --cmd '$(CMD_JSON)' --blobs $(BLOBS) --output $(EIF) --measurements $(MEASUREMENTS) $(EIF_BUILD_ARGS) >/dev/null
endif

measurements: ## print build/measurements.json (PCR0 = KMS ImageSha384); from build/app.eif when it exists, no nitro-cli needed
	@if [ -f $(EIF) ]; then \
	  mkdir -p $(dir $(MEASUREMENTS)) && $(PY) -m attestation pcrs --eif $(EIF) > $(MEASUREMENTS).tmp && mv $(MEASUREMENTS).tmp $(MEASUREMENTS); \
	fi
	$(call need_file,$(MEASUREMENTS),eif)
	@cat $(MEASUREMENTS)

reproduce: ## rebuild COMMIT from a fresh clone (pinned BLOBS, ROOTFS_TAR or make image) and compare with MEASUREMENTS; exit 0 = match
	@test -n "$(COMMIT)" || { echo "make reproduce: set COMMIT=<commit or tag> and MEASUREMENTS=<published measurements.json>."; exit 2; }
	$(call need_file,$(MEASUREMENTS),eif)
	$(PY) -m parent.eif.reproduce --commit $(COMMIT) --measurements $(MEASUREMENTS) --blobs $(BLOBS) $(if $(ROOTFS_TAR),--rootfs-tar $(ROOTFS_TAR),) $(if $(CMD_JSON),--cmd '$(CMD_JSON)',) $(if $(SIGNING_CERT),--signing-cert $(SIGNING_CERT),) $(if $(STATEMENT),--statement $(STATEMENT),)

run-enclave: $(STAMP) ## run build/app.eif (CPU=2 MEMORY=1024 CID=16 DEBUG=0)
	$(need_nitro_cli)
	$(need_device)
	$(call need_file,$(EIF),eif)
	$(PY) -m parent.nitro_cli --nitro-cli $(NITRO_CLI) run --eif-path $(EIF) --cpu-count $(CPU) --memory $(MEMORY) --enclave-cid $(CID) --enclave-name $(ENCLAVE_NAME) $(DEBUG_FLAG)

console: $(STAMP) ## follow the console of the debug-mode enclave ENCLAVE_NAME
	$(need_nitro_cli)
	$(PY) -m parent.nitro_cli --nitro-cli $(NITRO_CLI) console --enclave-name $(ENCLAVE_NAME)

describe: $(STAMP) ## list running enclaves (nitro-cli describe-enclaves)
	$(need_nitro_cli)
	$(PY) -m parent.nitro_cli --nitro-cli $(NITRO_CLI) describe

terminate: $(STAMP) ## terminate the enclave ENCLAVE_NAME (ALL=1: every enclave)
	$(need_nitro_cli)
	$(PY) -m parent.nitro_cli --nitro-cli $(NITRO_CLI) terminate $(if $(filter 1 yes true,$(ALL)),--all,--enclave-name $(ENCLAVE_NAME))

policy: $(STAMP) ## KMS key policy from measurements (ENCLAVE_ROLE=arn ADMIN=arn) -> build/key-policy.json
	$(call need_file,$(MEASUREMENTS),eif)
	@test -n "$(ENCLAVE_ROLE)" -a -n "$(ADMIN)" || { echo "make policy: set ENCLAVE_ROLE=<parent instance role ARN> and ADMIN=<key administrator ARN>."; exit 2; }
	$(PY) -m parent.key_policy --measurements $(MEASUREMENTS) --enclave-role $(ENCLAVE_ROLE) --admin $(ADMIN) > $(KEY_POLICY)
	@cat $(KEY_POLICY)

deploy-dry-run: $(STAMP) ## print the stack template and CloudFormation's change set for build/app.eif (REGION=...)
	$(call need_file,$(EIF),eif)
	$(PY) -m parent deploy --region $(REGION) --eif $(EIF) --dry-run $(if $(ADMIN),--key-admin $(ADMIN),) $(if $(ENDPOINT_URL),--endpoint-url $(ENDPOINT_URL),)
