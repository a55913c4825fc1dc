"""The template reader behind the benchmarks and `make local-invoke`: the functions as `sam deploy` configures them.

Nothing here hard-codes a default: the real template's values are compared with what the template itself
declares, so these tests hold while parameters, defaults and variables change.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.local.embedded_aws import EmbeddedAws
from tests.support.stack_standins import StackStandIns
from tests.support.template_env import Placeholders, Template, TemplateError, deployed_environment


def synthetic(globals_env: dict[str, Any], function_env: dict[str, Any], **extra: Any) -> Template:
    return Template(
        {
            "Parameters": {
                "Workers": {"Type": "Number", "Default": 8},
                "Flag": {"Type": "String", "Default": "on"},
                "Ratio": {"Type": "Number", "Default": 0.5},
                "NoDefault": {"Type": "String"},
            },
            "Conditions": {
                "FlagOn": {"Fn::Equals": [{"Ref": "Flag"}, "on"]},
                "FlagOff": {"Fn::Not": [{"Condition": "FlagOn"}]},
            },
            "Mappings": {"Sizes": {"8": {"Batch": 25}}},
            "Globals": {
                "Function": {
                    "Runtime": "python3.12",
                    "Handler": "app.handler",
                    "Timeout": 60,
                    "MemorySize": 1024,
                    "Environment": {"Variables": globals_env},
                }
            },
            "Resources": {
                "Fn": {"Type": "AWS::Serverless::Function", "Properties": {"Environment": {"Variables": function_env}}},
                "Queue": {"Type": "AWS::SQS::Queue"},
                **extra,
            },
        }
    )


def test_the_function_s_own_variables_win_over_globals_and_every_intrinsic_is_resolved() -> None:
    template = synthetic(
        {"WORKERS": {"Ref": "Workers"}, "SHARED": "global", "RATIO": {"Ref": "Ratio"}},
        {
            "SHARED": "mine",
            "QUEUE": {"Ref": "Queue"},
            "QUEUE_ARN": {"Fn::GetAtt": ["Queue", "Arn"]},
            "NAME": {"Fn::Sub": "${AWS::StackName}-${AWS::Region}-${Queue.Arn}-${!Literal}"},
            "CHOSEN": {"Fn::If": ["FlagOff", "off-branch", "on-branch"]},
            "DROPPED": {"Fn::If": ["FlagOn", {"Ref": "AWS::NoValue"}, "kept"]},
            "BATCH": {"Fn::FindInMap": ["Sizes", {"Ref": "Workers"}, "Batch"]},
            "JOINED": {"Fn::Join": ["/", ["a", {"Ref": "Flag"}, 3]]},
            "ENABLED": True,
        },
    )
    config = template.function("Fn", Placeholders())

    assert config.environment == {
        "WORKERS": "8",
        "SHARED": "mine",
        "RATIO": "0.5",
        "QUEUE": "<Queue>",
        "QUEUE_ARN": "<Queue.Arn>",
        "NAME": "s3-image-labeler-us-east-1-<Queue.Arn>-${Literal}",
        "CHOSEN": "on-branch",
        "BATCH": "25",
        "JOINED": "a/on/3",
        "ENABLED": "true",
    }
    assert (config.handler, config.runtime, config.timeout_seconds, config.memory_mb) == (
        "app.handler",
        "python3.12",
        60,
        1024,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Ref": "NoDefault"}, "parameter NoDefault has no Default"),
        ({"Ref": "Nowhere"}, "names neither a parameter nor a resource"),
        ({"Fn::ImportValue": "x"}, "Fn::ImportValue is not supported"),
        ({"Fn::GetAtt": ["Fn", "Arn"]}, "no local stand-in"),
    ],
)
def test_what_cannot_be_resolved_fails_naming_the_variable(value: Any, message: str) -> None:
    template = synthetic({}, {"BROKEN": value})
    lookup: Any = StackStandIns(template, lambda _: None, prefix="t") if "stand-in" in message else Placeholders()
    with pytest.raises(TemplateError, match=message) as caught:
        template.function("Fn", lookup)
    if "stand-in" not in message:
        assert "BROKEN" in str(caught.value)


def test_the_real_template_resolves_to_its_parameter_defaults(template: dict[str, Any]) -> None:
    reader = Template(template)
    defaults = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
    declared = template["Globals"]["Function"]["Environment"]["Variables"]
    for function in ("ManifestFunction", "WorkerFunction"):
        config = reader.function(function, Placeholders())
        assert set(declared) <= set(config.environment)
        for name, raw in declared.items():
            if isinstance(raw, dict) and raw.get("Ref") in defaults:
                assert config.environment[name] == str(defaults[raw["Ref"]]), name
            elif isinstance(raw, dict) and raw.get("Ref") in template["Resources"]:
                assert config.environment[name] == f"<{raw['Ref']}>", name
            elif not isinstance(raw, dict):
                assert config.environment[name] == (str(raw).lower() if isinstance(raw, bool) else str(raw)), name
    worker = reader.function("WorkerFunction", Placeholders())
    worker_timeout = template["Resources"]["WorkerFunction"]["Properties"]["Timeout"]["Ref"]
    assert worker.timeout_seconds == int(defaults[worker_timeout])
    mapping = reader.event_source_mapping("WorkerFunction", Placeholders())
    assert mapping["queue"] == "WorkQueue"
    assert mapping["batch_size"] >= 1 and mapping["maximum_concurrency"] >= 2
    assert reader.s3_event_buckets("ManifestFunction") == ["InputBucket"]


def test_stand_ins_are_created_as_the_template_declares_them(embedded_aws: EmbeddedAws) -> None:
    reader = Template.load()
    stack = StackStandIns(reader, embedded_aws.client, prefix="stand-ins-test")
    config = reader.function("WorkerFunction", stack)

    sqs, s3 = embedded_aws.client("sqs"), embedded_aws.client("s3")
    queue_url = config.environment["WORK_QUEUE_URL"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == stack.attribute("WorkDeadLetterQueue", "Arn")
    assert str(redrive["maxReceiveCount"]) == config.environment["MAX_RECEIVE_COUNT"]
    table = embedded_aws.client("dynamodb").describe_table(TableName=config.environment["STATE_TABLE"])["Table"]
    assert table["KeySchema"] == reader.resource("StateTable")["Properties"]["KeySchema"]
    assert s3.get_bucket_versioning(Bucket=stack.ref("InputBucket")).get("Status") == "Enabled"
    assert stack.ref("OutputBucket") == config.environment["OUTPUT_BUCKET"]
    with pytest.raises(TemplateError, match="no local stand-in"):
        stack.ref("ManifestFunctionLogGroup")


def test_only_what_a_harness_must_change_is_not_a_diagnostic() -> None:
    config = synthetic({"ALLOW_PRIVATE_NETWORKS": "false", "REKOGNITION_MAX_TPS": 50, "MAX_WORKERS": 8}, {}).function(
        "Fn", Placeholders()
    )
    as_deployed = deployed_environment(config, endpoints={"S3": "http://127.0.0.1:1"}, rekognition_max_tps=25)
    assert as_deployed.as_deployed
    assert as_deployed.variables["ALLOW_PRIVATE_NETWORKS"] == "true"
    assert as_deployed.variables["REKOGNITION_MAX_TPS"] == "25"
    assert as_deployed.variables["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:1"
    assert as_deployed.describe()["harness_overrides"]["REKOGNITION_MAX_TPS"] == {"template": "50", "set": "25"}

    changed = deployed_environment(config, endpoints={}, rekognition_max_tps=50, diagnostic={"MAX_WORKERS": "16"})
    assert not changed.as_deployed
    assert changed.variables["MAX_WORKERS"] == "16"
    assert changed.describe()["diagnostic_overrides"] == {"MAX_WORKERS": {"template": "8", "set": "16"}}
    with pytest.raises(ValueError, match="set by the harness"):
        deployed_environment(config, endpoints={}, rekognition_max_tps=50, diagnostic={"REKOGNITION_MAX_TPS": "9"})
