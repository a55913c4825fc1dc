"""The botocore settings every AWS client of the functions shares: what a request costs in CPU.

At the quota a container sends ~8 requests per image (S3, DetectLabels, DynamoDB); botocore's own
per-request work, not the network, is most of a worker's CPU (docs/scale.md, "CPU per image"):

* **A fixed User-Agent.** botocore rebuilds its User-Agent string twice for every request (~20
  components, each sanitised character by character): ~0.3–0.5 ms of CPU per request. A string given
  in the client's ``Config(user_agent=...)`` is sent as it is, with botocore's version after it (what
  AWS support reads); it leaves out botocore's feature codes (its usage telemetry).
* **Checksums only where an operation requires them** (``when_required``, botocore ≥ 1.36's other
  setting). By default botocore adds a CRC32 of every S3 upload and checks one on every download.
  Our objects are a few KB of JSON, written and read over HTTPS; an upload's body stays covered by
  SigV4's signed payload hash (S3 refuses a body that does not match it), as before 1.36.

>>> config = client_config(retries={"mode": "standard", "max_attempts": 5})   # doctest: +SKIP
>>> boto3.client("s3", config=config)                                          # doctest: +SKIP
"""

from __future__ import annotations

import platform
from functools import cache
from typing import Any

PRODUCT_NAME = "s3-image-labeler"
WHEN_REQUIRED = "when_required"


@cache
def user_agent() -> str:
    """``s3-image-labeler Python/<version>``, built once per process (botocore appends ``Botocore/<version>``)."""
    return f"{PRODUCT_NAME} Python/{platform.python_version()}"


def client_config(**settings: Any) -> Any:
    """A ``botocore.config.Config`` with ``settings`` and the shared ones above (``settings`` win)."""
    from botocore.config import Config

    shared: dict[str, Any] = {"user_agent": user_agent()}
    # A botocore older than 1.36 (a runtime's bundled one) has no checksum settings, and computes none.
    for option in ("request_checksum_calculation", "response_checksum_validation"):
        if option in Config.OPTION_DEFAULTS:
            shared[option] = WHEN_REQUIRED
    return Config(**{**shared, **settings})
