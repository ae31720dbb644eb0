# Targets that build the enclave image and EIF and run it on a Nitro-enabled instance
# (docs/deploy.md). Every target says what is missing (docker daemon, nitro-cli,
# /dev/nitro_enclaves, build/measurements.json) instead of failing obscurely.
# Variables: IMAGE, BASE_IMAGE (e.g. the arm64 base digest), EIF, CPU, MEMORY (MiB), CID, DEBUG=1, ENCLAVE_NAME, REGION, ENCLAVE_ROLE, ADMIN, ENDPOINT_URL.

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
BASE_IMAGE   ?=
# the last commit's time: same commit => same file mtimes in the image => same PCR2
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DEBUG_FLAG    = $(if $(filter 1 yes true,$(DEBUG)),--debug-mode,)

.PHONY: image eif measurements run-enclave console describe terminate policy deploy-dry-run

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

image: ## docker build the enclave image (Dockerfile.enclave, SOURCE_DATE_EPOCH from git)
	$(need_docker)
	tar --sort=name --exclude=__pycache__ --exclude='*.pyc' -cf - Dockerfile.enclave attestation enclave \
	  | docker build -f Dockerfile.enclave --build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(if $(BASE_IMAGE),--build-arg BASE=$(BASE_IMAGE),) -t $(IMAGE) -
	@echo "built $(IMAGE) (SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH)); next: make eif"

eif: $(STAMP) ## nitro-cli build-enclave -> build/app.eif and build/measurements.json
	$(need_nitro_cli)
	$(need_docker)
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || { echo "make eif: image $(IMAGE) not found: run 'make image' first."; exit 2; }
	@mkdir -p $(dir $(EIF)) $(dir $(MEASUREMENTS))
	$(PY) -m parent.nitro_cli --nitro-cli $(NITRO_CLI) build --docker-uri $(IMAGE) --output-file $(EIF) --measurements $(MEASUREMENTS)
	$(PY) -m attestation pcrs --eif $(EIF) --check-measurements $(MEASUREMENTS) >/dev/null
	@echo "$(EIF) measured; our reader agrees with nitro-cli. next: make policy / make run-enclave"

measurements: ## print build/measurements.json (PCR0 = KMS ImageSha384)
	$(call need_file,$(MEASUREMENTS),eif)
	@cat $(MEASUREMENTS)

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
