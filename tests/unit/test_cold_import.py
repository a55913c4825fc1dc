"""The handler modules import nothing heavy that their first event may not need (cold starts; see bench/)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Loaded on first need only: image decoding, the offline model, lenient/streamed manifest parsing,
# the fan-out machinery, Powertools' catalogue of event classes, boto3's transfer manager.
LAZY = [
    "PIL",
    "numpy",
    "onnxruntime",
    "json5",
    "ijson",
    "labeler.logic.fanout",
    "labeler.local",
    "labeler.cli",
    "aws_lambda_powertools.utilities.data_classes",
    "s3transfer",
]


@pytest.mark.parametrize("module", ["labeler.handlers.manifest_created", "labeler.handlers.work_batch"])
def test_importing_a_handler_loads_nothing_heavy(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout))

    heavy = {name for name in LAZY if name in loaded}
    if module.endswith("work_batch"):  # the worker exists to run fan-out batches from SQS events
        heavy -= {"labeler.logic.fanout", "aws_lambda_powertools.utilities.data_classes"}
    assert heavy == set()
