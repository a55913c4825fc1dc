# s3-image-labeler: the developer's interface.
#   make demo   label real photos locally: no AWS account, no Docker (installs what it needs)
#   make test   lint + unit + integration + infrastructure tests
#   make bench  benchmarks -> bench/results.json
# Every install step is here: a fresh clone needs nothing but Python 3.11 and the package registries.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv lint format test unit integration infra demo bench clean

help:
	@echo "make demo   - run the labeler locally on real photos (embedded S3, offline model, HTML gallery)"
	@echo "make test   - lint and run every test (unit, integration, infrastructure)"
	@echo "make bench  - run the benchmarks, write bench/results.json"
	@echo "make local-invoke FUNCTION=ManifestFunction|WorkerFunction EVENT=events/... - the built function under the Lambda emulator"
	@echo "make validate / checkov / build - template checks and sam build (see mk/infra.mk)"

$(STAMP): requirements.txt requirements-dev.txt requirements-local.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-local.txt -e .
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench scripts

format: $(STAMP)
	$(PY) -m ruff format src tests bench scripts
	$(PY) -m ruff check --fix src tests bench scripts

# local-invoke-ready (mk/local-invoke.mk): the built package and .venv-ric, for tests/infrastructure/test_local_invoke.py
test: lint model browser local-invoke-ready
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP) model browser
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) model browser
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

infra: $(STAMP) local-invoke-ready
	$(PY) -m pytest tests/infrastructure $(PYTEST_ARGS)

demo: $(STAMP) model
	$(PY) -m labeler.local.demo

bench: $(STAMP) model build
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .venv-* .aws-sam .pytest_cache .ruff_cache demo-output bench/out

-include $(wildcard mk/*.mk)
