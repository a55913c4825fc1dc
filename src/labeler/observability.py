"""The Powertools Logger, Tracer and Metrics of the service, created once and imported where needed.

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE
(set by template.yaml); the defaults below serve local runs and tests.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "s3-image-labeler")

logger = Logger(service=SERVICE)
# Trace the AWS calls (S3, SQS, DynamoDB, Rekognition). Not patch_all: it imports and patches every
# library it knows (sqlite3, http.client, ...), which costs cold-start time and traces nothing we use.
tracer = Tracer(service=SERVICE, patch_modules=("botocore",))
metrics = Metrics(service=SERVICE, namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "S3ImageLabeler"))

# The cost metrics (docs/cost.md). The template's DetectLabelsCallsAlarm watches DetectLabelsCalls with this
# module's namespace and its one dimension, service: a metric published with another dimension set is
# another metric to CloudWatch, and the alarm would not see it.
DETECT_LABELS_CALLS = "DetectLabelsCalls"
DETECT_LABELS_SAVED = "DetectLabelsSaved"


def publish_label_calls(*, calls: int, saved: int) -> None:
    """Publish the DetectLabels calls an invocation made and the calls it saved (cache hits, 304s).

    Called once per invocation by whichever function labeled (ManifestFunction inline, WorkerFunction per
    batch), so the sums over any period count every call once.
    """
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_metric(name=DETECT_LABELS_CALLS, unit=MetricUnit.Count, value=calls)
    metrics.add_metric(name=DETECT_LABELS_SAVED, unit=MetricUnit.Count, value=saved)


def publish_entry_metrics(tally: Any) -> None:
    """ImagesSucceeded / ImagesFailed / LabelsFromCache for the entries this invocation finished itself.

    Whichever function labeled an entry counts it, once: entries found done (a retry) are not in
    ``tally`` (``labeler.logic.pipeline.InvocationTally``).
    """
    metrics.add_metric(name="ImagesSucceeded", unit=MetricUnit.Count, value=tally.succeeded)
    metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=tally.failed)
    metrics.add_metric(name="LabelsFromCache", unit=MetricUnit.Count, value=tally.labels_from_cache)
