# The built function, run as Lambda runs it, without Docker. Included by the Makefile.
#
#   make local-invoke FUNCTION=ManifestFunction EVENT=events/s3-put-manifest.json
#   make local-invoke FUNCTION=WorkerFunction   EVENT=events/sqs-work-batch.json
#
# `sam build`'s output (.aws-sam/build/<Function>) runs under the Lambda Runtime Interface Emulator that
# the aws-sam-cli package ships (samcli/local/rapid/aws-lambda-rie-x86_64, from .venv-sam) with the
# runtime interface client from PyPI (awslambdaric) in .venv-ric, a python3.12 venv: the same runtime API
# the Lambda service drives. scripts/local_invoke.py starts the embedded S3/SQS/DynamoDB endpoint, the
# sample-photo server and the Rekognition stand-in, stages what the event needs, POSTs the event and
# prints the answer and the results; nothing is left running. With Docker, `sam local invoke` does the
# same in a container (see README).

FUNCTION          ?= ManifestFunction
EVENT             ?= events/s3-put-manifest.json
LOCAL_INVOKE_ARGS ?=
RIC_VENV          := .venv-ric
RIC_STAMP         := $(RIC_VENV)/.installed

.PHONY: local-invoke local-invoke-ready

# PY312_BIN: the python3.12 that mk/infra.mk finds for sam build (python3.12 on PATH, else pyenv's newest 3.12.x).
$(RIC_STAMP): requirements-ric.txt
	@test -n "$(PY312_BIN)" || { echo "python3.12 not found (the Lambda runtime's version): install it or set PY312_BIN=/dir/with/python3.12"; exit 1; }
	$(PY312_BIN)/python3.12 -m venv --clear $(RIC_VENV)
	$(RIC_VENV)/bin/python -m pip install -q --upgrade pip
	$(RIC_VENV)/bin/python -m pip install -q -r requirements-ric.txt
	@touch $@

# Everything local-invoke needs (make test runs it for tests/infrastructure/test_local_invoke.py).
local-invoke-ready: $(STAMP) build $(RIC_STAMP)

local-invoke: local-invoke-ready
	$(PY) scripts/local_invoke.py --function $(FUNCTION) --event $(EVENT) $(LOCAL_INVOKE_ARGS)
