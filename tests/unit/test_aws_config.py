"""Every client the functions build sends a fixed User-Agent and no checksum S3 does not require.

The requests are caught in botocore's ``before-send`` hook (answered there, nothing leaves the process):
what is checked is the request as it would go on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from labeler.adapters.aws_config import PRODUCT_NAME, client_config
from labeler.adapters.events import build_events_client
from labeler.adapters.labels.rekognition import build_client as build_rekognition_client
from labeler.adapters.quota_table import build_table_client
from labeler.adapters.store import build_s3_client


class _Caught(Exception):
    """The request was stopped in ``before-send``, its headers taken."""


def _sent_headers(client: Any, call: Callable[[Any], Any]) -> dict[str, str]:
    """The headers of the request ``call(client)`` sends (stopped before it leaves the process)."""
    seen: dict[str, str] = {}

    def catch(request: Any, **_: Any) -> None:
        seen.update({name: _text(value) for name, value in request.headers.items()})
        raise _Caught

    client.meta.events.register_first("before-send.*.*", catch)
    with pytest.raises(_Caught):
        call(client)
    return seen


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


BUILDERS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "s3": (build_s3_client, lambda c: c.put_object(Bucket="out-bucket", Key="results/m/a.json", Body=b'{"a": 1}')),
    "rekognition": (build_rekognition_client, lambda c: c.detect_labels(Image={"Bytes": b"\xff\xd8"})),
    "dynamodb": (build_table_client, lambda c: c.get_item(TableName="t", Key={"pk": {"S": "k"}})),
    "events": (
        build_events_client,
        lambda c: c.put_events(Entries=[{"Source": "s", "DetailType": "d", "Detail": "{}"}]),
    ),
}


@pytest.mark.parametrize("service", sorted(BUILDERS))
def test_the_functions_clients_send_the_fixed_user_agent(service: str) -> None:
    build, call = BUILDERS[service]
    headers = _sent_headers(build(), call)
    agent = headers["User-Agent"]
    assert agent.startswith(f"{PRODUCT_NAME} Python/")
    assert "Botocore/" in agent  # what AWS support reads is still there
    assert " m/" not in agent  # botocore's per-request feature codes are not rebuilt


def test_an_s3_upload_carries_no_checksum_s3_does_not_require() -> None:
    headers = {name.lower(): value for name, value in _sent_headers(build_s3_client(), BUILDERS["s3"][1]).items()}
    assert not [name for name in headers if name.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in headers


def test_settings_given_win_over_the_shared_ones() -> None:
    config = client_config(user_agent="other", read_timeout=3)
    assert (config.user_agent, config.read_timeout) == ("other", 3)
