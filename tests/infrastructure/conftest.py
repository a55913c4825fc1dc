"""Fixtures for the template tests: template.yaml as CloudFormation sees it, before and after SAM's transform."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


def plain(node: Any) -> Any:
    """cfn-lint's decoded nodes (dict/str subclasses with line marks) as plain JSON data."""
    return json.loads(json.dumps(node))


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """template.yaml decoded by cfn-lint (short-form intrinsics become {"Ref": ...}, {"Fn::Sub": ...})."""
    from cfnlint.decode import decode

    decoded, problems = decode(str(TEMPLATE))
    assert not problems, [str(p) for p in problems]
    return plain(decoded)


@pytest.fixture(scope="session")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """The template after the AWS::Serverless transform: the IAM roles and event wiring SAM generates.

    Local CodeUris become a placeholder S3 URI first, as `sam package` would do.
    """
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(template)
    sam["Globals"]["Function"]["CodeUri"] = "s3://example-bucket/code.zip"
    for resource in sam["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function" and "CodeUri" in resource.get("Properties", {}):
            resource["Properties"]["CodeUri"] = "s3://example-bucket/code.zip"
    result: dict[str, Any] = Translator(managed_policy_map={}, sam_parser=Parser()).translate(
        sam_template=sam, parameter_values={}
    )
    return plain(result)
