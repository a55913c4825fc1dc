"""`make local-invoke`, for each function: the shipped artifact (`sam build`'s output), run as Lambda runs it.

The built package runs under the Runtime Interface Emulator with awslambdaric (python3.12), against the
embedded S3/SQS/DynamoDB endpoint, the Rekognition stand-in and the sample photos, with the template's
environment. `make test` makes what this needs first (`make local-invoke-ready`: the build, .venv-ric);
without it the test fails and says which target to run, it never skips.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infrastructure.conftest import ROOT

SCRIPT = ROOT / "scripts" / "local_invoke.py"


def local_invoke(function: str, event: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--function", function, "--event", event, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if out.returncode == 2:
        pytest.fail(f"local-invoke cannot run here: {out.stderr.strip()} (`make local-invoke-ready` makes it all)")
    try:
        run: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"no JSON from local-invoke (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    assert out.returncode == 0, json.dumps(run["problems"]) + "\n" + run["log"][-4000:]
    return run


def nothing_left_running(run: dict[str, Any]) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(run["emulator_pid"], 0)  # the emulator (and the runtime in its session) is gone
    for port in run["ports"]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
            probe.bind(("127.0.0.1", port))  # nothing listens there any more


def test_the_built_manifest_function_labels_the_sample_manifest_under_the_emulator() -> None:
    run = local_invoke("ManifestFunction", "events/s3-put-manifest.json")

    assert run["build_dir"] == str(Path(".aws-sam") / "build" / "ManifestFunction")
    assert run["environment"]["as_deployed"], run["environment"]
    [summary] = run["response"]["manifests"]
    assert summary["status"] == "complete"
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (11, 6, 5)
    [report] = run["reports"]
    assert report["status"] == "complete" and report["total"] == 11
    labeled = [record for record in run["records"] if "labels" in record]
    assert len(labeled) == 6 and all(record["label_backend"] == "rekognition" for record in labeled)
    assert {record["image"]["format"] for record in labeled if record["image"]["converted"]} == {"gif", "bmp", "webp"}
    assert run["problems"] == []
    nothing_left_running(run)


def test_the_built_worker_function_labels_a_work_batch_from_the_queue_under_the_emulator() -> None:
    run = local_invoke("WorkerFunction", "events/sqs-work-batch.json")

    assert run["environment"]["as_deployed"], run["environment"]
    assert run["response"] == {"batchItemFailures": []}
    by_index = {record["entry_index"]: record for record in run["records"]}
    assert sorted(by_index) == [75, 76, 77, 78]  # one record per entry of the batch, the rejected one included
    assert [by_index[i]["image_id"] for i in (75, 76, 77)] == ["sku-10075", "sku-10076", "url-9e31520f3a012c8b64c6"]
    assert all("labels" in by_index[i] for i in (75, 76, 77))
    assert by_index[78]["error"]["code"] == "duplicate_id" and by_index[78]["error"]["first_index"] == 75
    assert run["deleted_messages"] == 1  # the event source mapping's part: the message is done
    assert run["problems"] == []
    nothing_left_running(run)
