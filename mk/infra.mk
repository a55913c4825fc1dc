# Template checks and the SAM build. Included by the Makefile.
#
#   make validate   sam validate --lint (SAM's own checks and cfn-lint) plus cfn-lint on the raw template
#   make checkov    security scan of template.yaml (exits non-zero on any failed check)
#   make build      sam build: runs src/Makefile (BuildMethod makefile) for both functions: src/requirements.txt
#                   and labeler/ for the python3.12 runtime, compiled to unchecked-hash bytecode
#   make infra      the template tests (tests/infrastructure; target defined in the Makefile)
#
# aws-sam-cli and checkov pin their own boto3 (checkov downgrades it), so each lives in its own
# venv; stamp files keep reruns fast. No AWS credentials are needed for any of these targets.

SAM_CLI_VERSION  ?= 1.170.0
CHECKOV_VERSION  ?= 3.3.30
# sam validate needs a region, never credentials; any region will do.
VALIDATE_REGION  ?= us-east-1
TEMPLATE         ?= template.yaml
SAM_BUILD_ARGS   ?=

SAM_VENV      := .venv-sam
SAM_STAMP     := $(SAM_VENV)/.installed
SAM           := $(SAM_VENV)/bin/sam
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
BUILD_STAMP   := .aws-sam/build/template.yaml

# SAM CLI must not try to phone home (no internet here, nor in many CI runners).
export SAM_CLI_TELEMETRY := 0

# The directory of a real python3.12 (the Lambda runtime's version), which src/Makefile runs (pip for
# the Lambda platform, compileall: bytecode is version-specific) and sam build's checks look up on
# PATH: python3.12 itself when it runs (a pyenv shim may exist without the version being active),
# else pyenv's newest 3.12.x. Override with PY312_BIN=/path/to/bin. Evaluated only when building.
PY312_BIN ?= $(shell \
  if python3.12 -c '' >/dev/null 2>&1; then \
    dirname "$$(python3.12 -c 'import sys; print(sys.executable)')"; \
  elif command -v pyenv >/dev/null 2>&1; then \
    ls -d "$$(pyenv root)"/versions/3.12.*/bin 2>/dev/null | sort -V | tail -n 1; \
  fi)

BUILD_INPUTS := $(TEMPLATE) samconfig.toml src/Makefile src/requirements.txt requirements.txt \
                $(shell find src/labeler -type f -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: validate checkov build build-clean

$(SAM_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q aws-sam-cli==$(SAM_CLI_VERSION)
	@touch $@

$(CHECKOV_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

validate: $(SAM_STAMP) $(STAMP)
	AWS_DEFAULT_REGION=$(VALIDATE_REGION) $(SAM) validate --lint --template-file $(TEMPLATE)
	$(VENV)/bin/cfn-lint $(TEMPLATE)

# BC_SKIP_MAPPING: do not fetch Prisma Cloud's check-id mapping (no network; not needed offline).
# Skips live in the template (Metadata.checkov.skip, each with its reason), never here.
checkov: $(CHECKOV_STAMP)
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -f $(TEMPLATE) --framework cloudformation --quiet --compact

build: $(BUILD_STAMP)

# env -u: this make's MAKEFLAGS (command-line variables such as PYTHON=..., the jobserver) must not
# leak into the make that sam build runs for src/Makefile.
$(BUILD_STAMP): $(SAM_STAMP) $(BUILD_INPUTS)
	@test -n "$(PY312_BIN)" || { echo "python3.12 not found (the Lambda runtime's version): install it or set PY312_BIN=/dir/with/python3.12"; exit 1; }
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PATH="$(PY312_BIN):$$PATH" \
	  $(SAM) build --template-file $(TEMPLATE) $(SAM_BUILD_ARGS)
	@touch $@

build-clean:
	rm -rf .aws-sam
