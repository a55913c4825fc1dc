"""template.yaml, samconfig, src/requirements.txt and events/: what must hold before anything is deployed.

The raw template is read with cfn-lint's decoder; IAM is checked on SAM's transformed output, where
the roles SAM generates (policy templates, destinations, managed policies) are visible.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from labeler.models.settings import Settings
from tests.infrastructure.conftest import ROOT

FUNCTIONS = ("ManifestFunction", "WorkerFunction")
BUCKETS = ("InputBucket", "OutputBucket", "AccessLogsBucket")
QUEUES = ("FailureQueue", "WorkQueue", "WorkDeadLetterQueue")
SETTINGS_FIELDS = {spec.name.upper(): spec for spec in fields(Settings)}
# Actions that have no resource-level permissions, and may therefore name Resource "*".
STAR_RESOURCE_ACTIONS = {"rekognition:DetectLabels"}
ALLOWED_MANAGED_POLICIES = {
    "service-role/AWSLambdaBasicExecutionRole",  # logs for the function (added by SAM)
    "AWSXrayWriteOnlyAccess",  # Tracing: Active (added by SAM)
}


# --- helpers ---------------------------------------------------------------------------------------
def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][name].get("Properties", {})
    return properties


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def mentions(expression: Any, logical_id: str) -> bool:
    """Whether an intrinsic expression refers to ``logical_id`` (Ref, GetAtt, or ${Name...} in a Sub)."""
    text = json.dumps(expression)
    return (
        f'{{"Ref": "{logical_id}"}}' in text
        or f'"Fn::GetAtt": ["{logical_id}"' in text
        or re.search(r"\$\{" + re.escape(logical_id) + r"[.}]", text) is not None
    )


def role_statements(transformed: dict[str, Any], function: str) -> list[dict[str, Any]]:
    """Every inline statement of the function's role; a conditional one (Fn::If, NoValue) counts as granted."""
    role = transformed["Resources"][f"{function}Role"]["Properties"]
    found = []
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
            found.extend(branch for branch in branches if branch != {"Ref": "AWS::NoValue"})
    return found


def allows(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """An Allow statement grants ``action`` on a resource expression that mentions ``resource``."""
    return any(
        statement["Effect"] == "Allow"
        and action in as_list(statement["Action"])
        and any(mentions(r, resource) for r in as_list(statement["Resource"]))
        for statement in statements
    )


def output_prefixes_in_use() -> list[str]:
    """The output-bucket prefixes of labeler.logic.keys that some code uses (not just defines)."""
    from labeler.logic import keys

    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "src" / "labeler").rglob("*.py"))
    used = [
        getattr(keys, name).strip("/")
        for name in dir(keys)
        if name.endswith("_PREFIX") and len(re.findall(rf"\b{name}\b", source)) > 1
    ]
    assert {"results", "reports", "cache"} <= set(used)
    return used


def function_env(template: dict[str, Any], function: str) -> dict[str, Any]:
    env = dict(template["Globals"]["Function"].get("Environment", {}).get("Variables", {}))
    env.update(props(template, function).get("Environment", {}).get("Variables", {}))
    return env


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / name).read_text(encoding="utf-8"))
    return event


def pins(path: Path) -> dict[str, str]:
    """``name -> ==version`` of a requirements file (comments and -r includes ignored)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(==.+)", line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        found[match.group(1).lower()] = (match.group(2) or "") + match.group(3)
    return found


# --- buckets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_is_private_encrypted_and_acl_free(template: dict[str, Any], bucket: str) -> None:
    p = props(template, bucket)
    assert p["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    rules = p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules and all(r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"} for r in rules)
    assert p["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert "AccessControl" not in p
    assert "WebsiteConfiguration" not in p


def test_every_bucket_is_one_of_the_known_three(template: dict[str, Any]) -> None:
    assert set(resources(template, "AWS::S3::Bucket")) == set(BUCKETS)


@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_policy_denies_plain_http_for_bucket_and_objects(template: dict[str, Any], bucket: str) -> None:
    policies = [p for p in resources(template, "AWS::S3::BucketPolicy").values() if mentions(p, bucket)]
    policies = [p for p in policies if p["Properties"]["Bucket"] == {"Ref": bucket}]
    assert len(policies) == 1, f"{bucket} needs exactly one bucket policy"
    statements = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    deny = [
        s
        for s in statements
        if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert deny, "no TLS-only statement"
    assert deny[0]["Principal"] == "*" and deny[0]["Action"] in ("s3:*", ["s3:*"])
    targets = json.dumps(deny[0]["Resource"])
    assert f'"Fn::GetAtt": ["{bucket}", "Arn"]' in targets and f"${{{bucket}.Arn}}/*" in targets
    for statement in statements:  # nothing is granted to everyone
        if statement["Effect"] == "Allow":
            assert statement["Principal"] not in ("*", {"AWS": "*"})


def test_access_logs_are_delivered_only_for_our_buckets(template: dict[str, Any]) -> None:
    for bucket, prefix in (("InputBucket", "input/"), ("OutputBucket", "output/")):
        assert props(template, bucket)["LoggingConfiguration"] == {
            "DestinationBucketName": {"Ref": "AccessLogsBucket"},
            "LogFilePrefix": prefix,
        }
    # S3 server access logging accepts only SSE-S3 on the target bucket.
    encryption = props(template, "AccessLogsBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    statements = props(template, "AccessLogsBucketPolicy")["PolicyDocument"]["Statement"]
    delivery = [s for s in statements if s["Effect"] == "Allow"]
    assert len(delivery) == 1
    assert delivery[0]["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert delivery[0]["Action"] == "s3:PutObject"
    assert delivery[0]["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    sources = delivery[0]["Condition"]["ArnLike"]["aws:SourceArn"]
    assert sources == [{"Fn::GetAtt": ["InputBucket", "Arn"]}, {"Fn::GetAtt": ["OutputBucket", "Arn"]}]


def test_versioning_and_lifecycle(template: dict[str, Any]) -> None:
    for bucket in ("InputBucket", "OutputBucket"):
        p = props(template, bucket)
        assert p["VersioningConfiguration"] == {"Status": "Enabled"}
        rules = {rule["Id"]: rule for rule in p["LifecycleConfiguration"]["Rules"]}
        assert rules["housekeeping"]["NoncurrentVersionExpiration"] == {
            "NoncurrentDays": {"Ref": "NoncurrentVersionDays"}
        }
        assert "Prefix" not in rules["housekeeping"]
    for bucket in BUCKETS:
        rules = props(template, bucket)["LifecycleConfiguration"]["Rules"]
        assert all(rule["Status"] == "Enabled" for rule in rules)
        assert any("AbortIncompleteMultipartUpload" in rule and "Prefix" not in rule for rule in rules), bucket
    output_rules = {rule["Id"]: rule for rule in props(template, "OutputBucket")["LifecycleConfiguration"]["Rules"]}
    assert output_rules["expire-url-memos"]["Prefix"] == "cache/urls/"
    assert output_rules["expire-url-memos"]["ExpirationInDays"] == {"Ref": "UrlMemoDays"}
    assert output_rules["expire-label-cache"]["Prefix"] == "cache/labels/"
    # results/ and reports/ are the team's data: no rule may expire them.
    assert not any(rule.get("Prefix", "").startswith(("results", "reports")) for rule in output_rules.values())
    logs = props(template, "AccessLogsBucket")["LifecycleConfiguration"]["Rules"]
    assert logs[0]["ExpirationInDays"] == {"Ref": "AccessLogRetentionDays"}


def test_bucket_names_are_deterministic_and_iam_names_the_input_bucket_without_a_ref(
    template: dict[str, Any],
) -> None:
    for bucket, word in (("InputBucket", "input"), ("OutputBucket", "output")):
        name = props(template, bucket)["BucketName"]["Fn::If"]
        assert name[0] == "BucketNamesFromStackName"
        assert name[1] == {"Fn::Sub": f"${{AWS::StackName}}-{word}-${{AWS::AccountId}}-${{AWS::Region}}"}
        assert name[2] == {"Fn::Sub": f"${{BucketNamePrefix}}-{word}-${{AWS::AccountId}}-${{AWS::Region}}"}
    # The bucket's notification depends on the function: its role must not Ref/GetAtt the bucket.
    policies = props(template, "ManifestFunction")["Policies"]
    assert not mentions(policies, "InputBucket")
    assert "-input-${AWS::AccountId}-${AWS::Region}/*" in json.dumps(policies)
    # Longest names still fit S3's 63 characters: 28-character prefix, 14-character region.
    prefix = template["Parameters"]["BucketNamePrefix"]
    assert re.fullmatch(prefix["AllowedPattern"], "a" * 28) and not re.fullmatch(prefix["AllowedPattern"], "a" * 29)
    assert not re.fullmatch(prefix["AllowedPattern"], "Upper") and re.fullmatch(prefix["AllowedPattern"], "")
    assert len("a" * 28 + "-output-123456789012-ap-southeast-2") <= 63


# --- IAM -------------------------------------------------------------------------------------------------
def test_no_full_access_or_wildcard_managed_policies(template: dict[str, Any], transformed: dict[str, Any]) -> None:
    assert "FullAccess" not in (ROOT / "template.yaml").read_text(encoding="utf-8")
    roles = resources(transformed, "AWS::IAM::Role")
    assert set(roles) == {f"{f}Role" for f in FUNCTIONS} | {"RecheckScheduleRole"}
    for name, role in roles.items():
        if name == "RecheckScheduleRole":  # the scheduler's own role: inline statements only
            assert "ManagedPolicyArns" not in role["Properties"]
            continue
        arns = role["Properties"].get("ManagedPolicyArns", [])
        names = {json.dumps(arn).split(":policy/")[-1].rstrip('"]}') for arn in arns}
        # e.g. no AWSLambdaSQSQueueExecutionRole, whose statements apply to every queue
        assert names == ALLOWED_MANAGED_POLICIES, name


@pytest.mark.parametrize("function", FUNCTIONS)
def test_inline_statements_are_scoped(transformed: dict[str, Any], function: str) -> None:
    for statement in role_statements(transformed, function):
        assert statement["Effect"] == "Allow"
        actions = set(as_list(statement["Action"]))
        assert not any(a == "*" or a.endswith(":*") for a in actions), statement
        if "*" in as_list(statement["Resource"]):
            assert actions <= STAR_RESOURCE_ACTIONS, statement
            assert statement["Resource"] == "*"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_roles_allow_every_call_the_code_makes(transformed: dict[str, Any], function: str) -> None:
    statements = role_statements(transformed, function)
    # labeler.adapters.store: records, reports and the cache in the output bucket; HEAD of a
    # missing key must answer 404 (needs s3:ListBucket), not 403.
    for prefix in output_prefixes_in_use():
        for action in ("s3:GetObject", "s3:PutObject"):
            assert any(
                s["Effect"] == "Allow"
                and action in as_list(s["Action"])
                and any(f"${{OutputBucket.Arn}}/{prefix}/*" in json.dumps(r) for r in as_list(s["Resource"]))
                for s in statements
            ), (action, prefix)
    assert allows(statements, "s3:ListBucket", "OutputBucket")
    # labeler.adapters.progress and Powertools idempotency (TransactWriteItems needs the item actions).
    for action in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "ConditionCheckItem"):
        assert allows(statements, f"dynamodb:{action}", "StateTable"), action
    assert allows(statements, "rekognition:DetectLabels", "*") or any(
        "rekognition:DetectLabels" in as_list(s["Action"]) and s["Resource"] == "*" for s in statements
    )
    granted = {action for s in statements for action in as_list(s["Action"])}
    assert not granted & {"dynamodb:Scan", "dynamodb:Query", "dynamodb:BatchWriteItem", "s3:DeleteObject"}


def test_manifest_role(transformed: dict[str, Any]) -> None:
    statements = role_statements(transformed, "ManifestFunction")
    text = json.dumps(statements)
    for action in ("s3:GetObject", "s3:GetObjectVersion"):  # the event's version of the manifest
        assert any(
            action in as_list(s["Action"]) and "-input-${AWS::AccountId}-${AWS::Region}/*" in json.dumps(s["Resource"])
            for s in statements
        ), action
    assert "s3:PutObject" not in json.dumps([s for s in statements if "-input-" in json.dumps(s["Resource"])])
    assert allows(statements, "sqs:SendMessage", "WorkQueue")  # SendMessageBatch
    assert allows(statements, "sqs:SendMessage", "FailureQueue")  # the OnFailure destination (SAM adds it)
    assert "sqs:ReceiveMessage" not in text


def test_worker_role(transformed: dict[str, Any]) -> None:
    statements = role_statements(transformed, "WorkerFunction")
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"):
        assert allows(statements, action, "WorkQueue"), action
    assert allows(statements, "sqs:SendMessage", "WorkDeadLetterQueue")  # the reason-tagged copy
    assert not allows(statements, "sqs:SendMessage", "WorkQueue")
    assert "-input-" not in json.dumps(statements)  # work batches carry their entries


# --- functions and events ------------------------------------------------------------------------------
def test_globals(template: dict[str, Any]) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.12"
    assert glob["Architectures"] == ["x86_64"]
    assert glob["Tracing"] == "Active"
    assert glob["CodeUri"] == "src/"
    assert glob["MemorySize"] == {"Ref": "FunctionMemory"}
    assert template["Parameters"]["FunctionMemory"]["Default"] == 1769


@pytest.mark.parametrize("function", FUNCTIONS)
def test_handler_resolves_to_a_function(template: dict[str, Any], function: str) -> None:
    module_name, _, attribute = props(template, function)["Handler"].rpartition(".")
    handler = getattr(importlib.import_module(module_name), attribute)
    assert callable(handler)


def test_handlers_are_the_documented_ones(template: dict[str, Any]) -> None:
    assert props(template, "ManifestFunction")["Handler"] == "labeler.handlers.manifest_created.handler"
    assert props(template, "WorkerFunction")["Handler"] == "labeler.handlers.work_batch.handler"


def test_manifest_function_is_triggered_by_json_and_jsonl_uploads(template: dict[str, Any]) -> None:
    events = props(template, "ManifestFunction")["Events"]
    suffixes = set()
    for event in events.values():
        assert event["Type"] == "S3"
        assert event["Properties"]["Bucket"] == {"Ref": "InputBucket"}
        assert event["Properties"]["Events"] == "s3:ObjectCreated:*"
        rules = event["Properties"]["Filter"]["S3Key"]["Rules"]
        assert [rule["Name"] for rule in rules] == ["suffix"]
        suffixes.add(rules[0]["Value"])
    assert suffixes == {".json", ".jsonl"}
    assert len(events) == 2


def test_manifest_function_async_failures_and_concurrency(template: dict[str, Any]) -> None:
    p = props(template, "ManifestFunction")
    assert p["EventInvokeConfig"]["MaximumRetryAttempts"] == 2
    assert p["EventInvokeConfig"]["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["FailureQueue", "Arn"]},
    }
    assert p["ReservedConcurrentExecutions"]["Fn::If"][1] == {"Ref": "ManifestReservedConcurrency"}
    assert p["ReservedConcurrentExecutions"]["Fn::If"][2] == {"Ref": "AWS::NoValue"}  # 0 = unreserved, not throttled
    assert "Timeout" not in p  # Globals: FunctionTimeout
    assert template["Globals"]["Function"]["Timeout"] == {"Ref": "FunctionTimeout"}
    assert template["Parameters"]["FunctionTimeout"]["Default"] == 900
    assert template["Parameters"]["FunctionTimeout"]["MaxValue"] == 900


def test_worker_consumes_the_work_queue_one_message_at_a_time(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    assert "Events" not in props(template, "WorkerFunction")  # see the template: no SAM SQS event on purpose
    mappings = resources(transformed, "AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 1
    mapping = next(iter(mappings.values()))["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["WorkQueue", "Arn"]}
    assert mapping["FunctionName"] == {"Ref": "WorkerFunction"}
    assert mapping["BatchSize"] == 1
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "WorkerMaxConcurrency"}}
    assert template["Parameters"]["WorkerMaxConcurrency"]["MinValue"] == 2
    assert template["Parameters"]["WorkerMaxConcurrency"]["Default"] == 5


def test_redrive_and_visibility(template: dict[str, Any]) -> None:
    work = props(template, "WorkQueue")
    assert work["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["WorkDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    # 3 labeling attempts + the clean-up delivery that labels nothing; one attempt at least.
    assert template["Parameters"]["MaxReceiveCount"]["Default"] == 4
    assert template["Parameters"]["MaxReceiveCount"]["MinValue"] == 2

    # Visibility timeout >= 6 x the worker's timeout (AWS guidance for SQS event sources), for every choice.
    assert work["VisibilityTimeout"] == {
        "Fn::FindInMap": ["WorkQueueSettings", "VisibilityTimeout", {"Ref": "WorkerTimeout"}]
    }
    assert props(template, "WorkerFunction")["Timeout"] == {"Ref": "WorkerTimeout"}
    table = template["Mappings"]["WorkQueueSettings"]["VisibilityTimeout"]
    allowed = template["Parameters"]["WorkerTimeout"]["AllowedValues"]
    assert {str(v) for v in allowed} == set(table)
    for timeout, visibility in table.items():
        assert 6 * int(timeout) <= visibility <= 43200
        assert int(timeout) <= 900
    assert template["Parameters"]["WorkerTimeout"]["Default"] in allowed


@pytest.mark.parametrize("queue", QUEUES)
def test_queues_are_encrypted_and_tls_only(template: dict[str, Any], queue: str) -> None:
    p = props(template, queue)
    assert p.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in p
    policy = props(template, "QueuesTlsOnlyPolicy")
    assert {"Ref": queue} in policy["Queues"]
    statement = policy["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {"Fn::GetAtt": [queue, "Arn"]} in statement["Resource"]


def test_a_killed_invocation_blocks_its_retries_for_a_lease_shorter_than_lambdas_first_retry(
    template: dict[str, Any],
) -> None:
    lease = template["Parameters"]["IdempotencyLeaseSeconds"]
    assert lease["Default"] < 60  # Lambda retries a failed async event after about a minute
    assert function_env(template, "ManifestFunction")["IDEMPOTENCY_LEASE_SECONDS"] == {"Ref": "IdempotencyLeaseSeconds"}
    assert function_env(template, "WorkerFunction")["MAX_RECEIVE_COUNT"] == {"Ref": "MaxReceiveCount"}


def test_dead_letter_queues_keep_messages_14_days(template: dict[str, Any]) -> None:
    fourteen_days = 14 * 24 * 3600
    assert props(template, "FailureQueue")["MessageRetentionPeriod"] == fourteen_days
    assert props(template, "WorkDeadLetterQueue")["MessageRetentionPeriod"] == fourteen_days
    # A moved message keeps its original enqueue time: the DLQ must keep messages longer than the source.
    assert props(template, "WorkQueue")["MessageRetentionPeriod"] < fourteen_days


def test_state_table(template: dict[str, Any]) -> None:
    p = props(template, "StateTable")
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert p["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    # Powertools idempotency's default attribute names: key "id", expiry "expiration".
    assert p["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_logs_to_its_own_group_with_retention(template: dict[str, Any], function: str) -> None:
    group = props(template, function)["LoggingConfig"]["LogGroup"]["Ref"]
    assert template["Resources"][group]["Type"] == "AWS::Logs::LogGroup"
    assert props(template, group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_outputs(template: dict[str, Any]) -> None:
    assert set(template["Outputs"]) >= {
        "InputBucketName",
        "OutputBucketName",
        "ManifestFunctionArn",
        "WorkerFunctionArn",
        "WorkQueueUrl",
        "WorkDeadLetterQueueUrl",
        "FailureQueueUrl",
        "StateTableName",
    }


def test_checkov_skips_carry_a_reason(template: dict[str, Any]) -> None:
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), (name, skip)
            assert len(skip.get("comment", "")) > 20, (name, skip)


# --- environment = Settings -----------------------------------------------------------------------------
@pytest.mark.parametrize("function", FUNCTIONS)
def test_env_vars_are_settings_fields_or_powertools(template: dict[str, Any], function: str) -> None:
    env = function_env(template, function)
    runtime = {"GLIBC_TUNABLES"}  # read by the C library at process start, not by Settings
    unknown = {
        name for name in env if name not in SETTINGS_FIELDS.keys() | runtime and not name.startswith("POWERTOOLS_")
    }
    assert not unknown, f"not a Settings field: {sorted(unknown)}"
    required = {name for name, spec in SETTINGS_FIELDS.items() if spec.default is MISSING}
    required |= {"WORK_QUEUE_URL", "STATE_TABLE", "DEAD_LETTER_QUEUE_URL"}  # fan-out is off without them
    assert required <= set(env)
    assert env["OUTPUT_BUCKET"] == {"Ref": "OutputBucket"}
    assert env["ALLOW_PRIVATE_NETWORKS"] == "false"
    assert env["LABEL_BACKEND"] == "rekognition"
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"} <= set(env)


def test_parameter_defaults_agree_with_settings_defaults(template: dict[str, Any]) -> None:
    """A deploy with default parameters behaves as the Settings defaults (documented in docs/reference.md) say."""
    checked = 0
    for name, value in function_env(template, "ManifestFunction").items():
        if name not in SETTINGS_FIELDS or not (isinstance(value, dict) and "Ref" in value):
            continue
        parameter = template["Parameters"].get(value["Ref"])
        if parameter is None:
            continue
        default = SETTINGS_FIELDS[name].default
        if parameter["Type"] == "Number":
            assert float(parameter["Default"]) == float(default), (name, parameter["Default"], default)
        else:
            assert str(parameter["Default"]) == str(default), (name, parameter["Default"], default)
        checked += 1
    assert checked >= 10


def test_parsed_settings_from_template_defaults_validate(template: dict[str, Any]) -> None:
    env = {}
    for name, value in function_env(template, "WorkerFunction").items():
        if isinstance(value, dict) and "Ref" in value and value["Ref"] in template["Parameters"]:
            value = template["Parameters"][value["Ref"]]["Default"]
        elif isinstance(value, dict):
            value = f"resolved-{name.lower()}"
        env[name] = str(value)
    settings = Settings.from_env(env)
    assert settings.worker_max_concurrency == 5 and settings.max_receive_count == 4
    assert settings.state_table  # the shared DetectLabels limiter is on in every deployed function
    # labels only, no filters, and manifests may ask for nothing more (IMAGE_PROPERTIES is opt-in)
    assert settings.label_options().request_params() == {
        "Features": ["GENERAL_LABELS"],
        "MinConfidence": 55.0,
        "MaxLabels": 50,
    }
    assert settings.manifest_feature_names == ("GENERAL_LABELS",)
    # the cap a normal run never reaches: one call per entry of the largest manifest (docs/cost.md)
    assert settings.max_label_calls_per_manifest == settings.max_manifest_entries > 0


def test_every_feature_setting_the_template_allows_is_one_settings_accepts(template: dict[str, Any]) -> None:
    for parameter, variable in (("LabelFeatures", "LABEL_FEATURES"), ("ManifestFeatures", "MANIFEST_FEATURES")):
        for value in template["Parameters"][parameter]["AllowedValues"]:
            Settings.from_env({"OUTPUT_BUCKET": "out", variable: value})  # raises ConfigurationError otherwise
    assert "IMAGE_PROPERTIES" not in template["Parameters"]["LabelFeatures"]["Default"]


def defaults(template: dict[str, Any]) -> dict[str, float]:
    return {name: float(spec["Default"]) for name, spec in template["Parameters"].items() if spec["Type"] == "Number"}


def test_no_parameter_divides_the_quota_statically(template: dict[str, Any]) -> None:
    assert "RekognitionTpsShare" not in template["Parameters"]
    for function in FUNCTIONS:
        assert "REKOGNITION_TPS_SHARE" not in function_env(template, function)
        assert function_env(template, function)["STATE_TABLE"] == {"Ref": "StateTable"}  # where the quota is shared


def test_one_invocation_at_the_defaults_can_use_the_whole_quota(template: dict[str, Any]) -> None:
    """docs/scale.md: MAX_WORKERS threads keep the quota busy while an image takes up to ~0.6 s."""
    d = defaults(template)
    image_seconds = 0.1 + 0.15  # the reference image: 100 ms download, 150 ms DetectLabels
    assert d["MaxWorkers"] / image_seconds >= 2 * d["RekognitionMaxTps"]
    assert d["MaxWorkers"] / 0.6 >= d["RekognitionMaxTps"]
    # a lone inline manifest is then quota-bound: N / quota >= N * image_seconds / MAX_WORKERS
    assert d["InlineMaxImages"] / d["RekognitionMaxTps"] >= d["InlineMaxImages"] * image_seconds / d["MaxWorkers"]


def test_a_fan_out_at_the_defaults_keeps_the_quota_busy_and_fits_its_timeouts(template: dict[str, Any]) -> None:
    d = defaults(template)
    # images in flight across the workers: enough for 1 s per image (slow hosts) at twice the quota
    assert d["WorkerMaxConcurrency"] * min(d["MaxWorkers"], d["BatchSize"]) >= 2 * d["RekognitionMaxTps"]
    # a batch fits WorkerTimeout (less the deadline margin, 10 % of it) even when its worker gets only
    # a tenth of the quota, or when every download times out
    usable = 0.9 * d["WorkerTimeout"]
    share = d["RekognitionMaxTps"] / 10
    assert d["BatchSize"] / share <= usable
    rounds = -(-d["BatchSize"] // d["MaxWorkers"])
    assert rounds * d["DownloadTimeoutSeconds"] <= usable


def test_the_defaults_deploy_in_a_new_account_with_10_concurrent_executions(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    # Reserved concurrency must leave 10 unreserved in such an account: none may be reserved.
    d = defaults(template)
    assert d["ManifestReservedConcurrency"] == 0
    manifest = transformed["Resources"]["ManifestFunction"]["Properties"]["ReservedConcurrentExecutions"]
    assert manifest["Fn::If"][0] == "ReserveManifestConcurrency"
    reserve = transformed["Conditions"]["ReserveManifestConcurrency"]  # false at 0: the property is left out
    assert reserve == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ManifestReservedConcurrency"}, 0]}]}
    for name, resource in transformed["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function" and name != "ManifestFunction":
            assert "ReservedConcurrentExecutions" not in resource["Properties"], name
    # The worker's MaximumConcurrency caps it without reserving; it leaves room for manifests.
    assert d["WorkerMaxConcurrency"] <= 10 / 2


# --- packaging ------------------------------------------------------------------------------------------
def test_packaged_requirements_match_the_project(template: dict[str, Any]) -> None:
    packaged = pins(ROOT / "src" / "requirements.txt")
    runtime = pins(ROOT / "requirements.txt")
    dev = pins(ROOT / "requirements-dev.txt")
    assert {k: v for k, v in packaged.items() if k != "boto3"} == runtime
    assert packaged["boto3"] == dev["boto3"]  # see src/requirements.txt: keeps the packaged botocore matched


@pytest.mark.parametrize("function", FUNCTIONS)
def test_functions_are_built_by_the_makefile(template: dict[str, Any], function: str) -> None:
    """src/Makefile, not sam's Python builder: it ships bytecode (see the Makefile's header)."""
    assert template["Resources"][function]["Metadata"]["BuildMethod"] == "makefile"
    assert props(template, function).get("CodeUri", template["Globals"]["Function"]["CodeUri"]) == "src/"


def makefile_dry_run(target: str, artifacts_dir: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "LAMBDA_PYTHON"}}
    env["ARTIFACTS_DIR"] = artifacts_dir  # sam build passes it in the environment
    out = subprocess.run(
        [make, "--no-print-directory", "-n", "--makefile", str(ROOT / "src" / "Makefile"), target],
        cwd=ROOT / "src",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_makefile_targets_share_one_recipe_that_ships_unchecked_hash_bytecode(template: dict[str, Any]) -> None:
    makefile = (ROOT / "src" / "Makefile").read_text(encoding="utf-8")
    built = [name for name in FUNCTIONS if template["Resources"][name]["Metadata"].get("BuildMethod") == "makefile"]
    rule = re.search(r"^(build-\S+(?: build-\S+)*):", makefile, re.MULTILINE)
    assert rule and set(rule.group(1).split()) == {f"build-{name}" for name in built}
    recipes = {name: makefile_dry_run(f"build-{name}", "/ARTIFACTS") for name in built}
    assert len(set(recipes.values())) == 1, "both functions must be built alike"
    recipe = " ".join(recipes[built[0]].replace("\\\n", " ").split())
    # Dependencies for the Lambda platform (CPython 3.12 on x86_64), binary wheels only, not compiled by pip.
    install = re.search(r"-m pip install (.*?)-r requirements\.txt", recipe)
    assert install, recipe
    for option in (
        '--target "/ARTIFACTS"',
        "--platform manylinux2014_x86_64",
        "--implementation cp",
        "--python-version 3.12",
        "--only-binary=:all:",
        "--no-compile",
    ):
        assert option in install.group(1), option
    assert "python3.12 -m pip install" in recipe and "python3.12 -m compileall" in recipe  # bytecode is per version
    # Our package, without local-only code and without stale caches; then every module compiled.
    assert 'cp -R labeler "/ARTIFACTS/labeler"' in recipe
    assert '"/ARTIFACTS/labeler/local"' in recipe and '"/ARTIFACTS/labeler/cli.py"' in recipe
    compile_step = re.search(r"-m compileall (.*)", recipe)
    assert compile_step, recipe
    for option in ("-f", "--invalidation-mode unchecked-hash", '-s "/ARTIFACTS"', "-p /var/task"):
        assert f" {option} " in f" {compile_step.group(1)} ", option
    assert compile_step.group(1).rstrip().endswith('"/ARTIFACTS"')
    assert recipe.index("-m pip install") < recipe.index("cp -R labeler") < recipe.index("-m compileall")


def test_lambda_path_never_imports_local_only_code() -> None:
    """labeler/local/ and labeler/cli.py are left out of the package: nothing else may import them."""
    package = ROOT / "src" / "labeler"
    local_only = {package / "cli.py", *(package / "local").rglob("*.py")}
    pattern = re.compile(
        r"^\s*(from|import)\s+labeler\.(local|cli)\b|^\s*from\s+labeler\s+import\s+(local|cli)\b", re.M
    )
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path not in local_only and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders


def test_samconfig() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    assert config["version"] == 0.1
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["stack_name"] == "s3-image-labeler"
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["confirm_changeset"] is True and deploy["resolve_s3"] is True
    assert config["default"]["build"]["parameters"] == {"cached": True, "parallel": True}
    assert config["default"]["validate"]["parameters"]["lint"] is True


# --- sample events -----------------------------------------------------------------------------------------
EVENT_KEYS = {
    "s3-put-manifest.json": ["manifests/sample.json"],
    "s3-put-key-with-space-and-plus.json": ["manifests/holiday photos+2024.json"],
    "s3-put-two-records.json": ["manifests/cats.json", "manifests/dogs.jsonl"],
}


def test_every_event_file_is_known_and_parses() -> None:
    names = {path.name for path in (ROOT / "events").glob("*.json")}
    assert names == {*EVENT_KEYS, "sqs-work-batch.json", "s3-test-event.json"}
    for name in names:
        load_event(name)


@pytest.mark.parametrize("name", sorted(EVENT_KEYS))
def test_s3_events_decode_to_the_intended_keys(name: str) -> None:
    from aws_lambda_powertools.utilities.data_classes import S3Event

    event = load_event(name)
    records = event["Records"]
    assert [unquote_plus(r["s3"]["object"]["key"]) for r in records] == EVENT_KEYS[name]
    for record, parsed in zip(records, S3Event(event).records, strict=True):
        assert record["eventSource"] == "aws:s3" and record["eventName"].startswith("ObjectCreated:")
        assert parsed.s3.bucket.name == "s3-image-labeler-input-example"
        s3_object = parsed.s3.get_object
        assert s3_object.version_id and s3_object.sequencer and s3_object.etag  # the input bucket is versioned
        assert unquote_plus(s3_object.key).endswith((".json", ".jsonl"))  # what the suffix filters let through
    assert len({r["s3"]["object"]["sequencer"] for r in records}) == len(records)


@pytest.mark.parametrize("name", sorted(EVENT_KEYS))
def test_the_handler_reads_the_intended_manifests_from_s3_events(name: str) -> None:
    from labeler.handlers.manifest_created import manifest_ref

    refs = [manifest_ref(record) for record in load_event(name)["Records"]]
    assert [ref.key for ref in refs] == EVENT_KEYS[name]
    assert all(ref.version_id and ref.sequencer for ref in refs)
    assert len({ref.run_id for ref in refs}) == len(refs)


def test_key_with_space_and_plus_is_encoded_as_s3_encodes_it() -> None:
    record = load_event("s3-put-key-with-space-and-plus.json")["Records"][0]
    assert record["s3"]["object"]["key"] == "manifests/holiday+photos%2B2024.json"


def test_s3_test_event_has_no_records() -> None:
    event = load_event("s3-test-event.json")
    assert event["Event"] == "s3:TestEvent" and "Records" not in event


def test_sqs_event_carries_a_work_batch() -> None:
    from labeler.logic.fanout import WorkBatch

    event = load_event("sqs-work-batch.json")
    (record,) = event["Records"]
    assert record["eventSource"] == "aws:sqs"
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    body = json.loads(record["body"])
    batch = WorkBatch.from_message(body)
    assert batch.to_message() == body
    assert batch.entries and batch.manifest.key.endswith((".json", ".jsonl"))
    assert int(record["attributes"]["ApproximateReceiveCount"]) >= 1


def test_the_allocator_returns_big_image_buffers_to_the_os(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    tunables = dict(item.split("=") for item in env["GLIBC_TUNABLES"].split(":"))
    # 64 KiB: a download's 64-KiB chunks come from mmap too (bench: peak RSS 191 -> 174 MiB on the mix)
    assert tunables == {"glibc.malloc.mmap_threshold": "65536", "glibc.malloc.arena_max": "2"}


# --- issue 10: the query index, completion events, S3 sources ------------------------------------------------
QUERY_RESOURCES = {
    "QueryDatabase": "AWS::Glue::Database",
    "IndexTable": "AWS::Glue::Table",
    "QueryWorkGroup": "AWS::Athena::WorkGroup",
}


def resolve(expression: Any, parameters: dict[str, Any], conditions: dict[str, Any]) -> Any:
    """Evaluate the intrinsics of the template's IAM expressions (Ref, Sub, Join, Split, If) as CloudFormation does."""
    if isinstance(expression, list):
        return [resolve(item, parameters, conditions) for item in expression]
    if not isinstance(expression, dict):
        return expression
    if set(expression) == {"Ref"}:
        return parameters[expression["Ref"]]
    if "Fn::Join" in expression:
        delimiter, items = expression["Fn::Join"]
        return delimiter.join(resolve(items, parameters, conditions))
    if "Fn::Split" in expression:
        delimiter, text = expression["Fn::Split"]
        return resolve(text, parameters, conditions).split(delimiter)
    if "Fn::Sub" in expression:
        text, names = expression["Fn::Sub"] if isinstance(expression["Fn::Sub"], list) else (expression["Fn::Sub"], {})
        values = {**parameters, **{k: resolve(v, parameters, conditions) for k, v in names.items()}}
        return re.sub(r"\$\{([^}!]+)\}", lambda m: str(values[m.group(1)]), text)
    if "Fn::If" in expression:
        name, yes, no = expression["Fn::If"]
        return resolve(yes if condition(name, parameters, conditions) else no, parameters, conditions)
    raise AssertionError(f"unexpected intrinsic {expression}")


def condition(name: str, parameters: dict[str, Any], conditions: dict[str, Any]) -> bool:
    def evaluate(node: Any) -> bool:
        if "Fn::Equals" in node:
            left, right = (resolve(side, parameters, conditions) for side in node["Fn::Equals"])
            return bool(left == right)
        if "Fn::Not" in node:
            return not evaluate(node["Fn::Not"][0])
        if "Condition" in node:
            return condition(node["Condition"], parameters, conditions)
        raise AssertionError(f"unexpected condition {node}")

    return evaluate(conditions[name])


def statement_by_sid(transformed: dict[str, Any], function: str, sid: str) -> dict[str, Any]:
    found = [s for s in role_statements(transformed, function) if s.get("Sid") == sid]
    assert len(found) == 1, (function, sid)
    return found[0]


def test_the_query_resources_exist(template: dict[str, Any]) -> None:
    for name, kind in QUERY_RESOURCES.items():
        assert template["Resources"][name]["Type"] == kind
    assert props(template, "QueryDatabase")["DatabaseInput"]["Name"] == {"Ref": "QueryDatabaseName"}
    assert re.fullmatch(template["Parameters"]["QueryDatabaseName"]["AllowedPattern"], "s3_image_labeler")
    assert set(template["Outputs"]) >= {"QueryDatabaseName", "IndexTableName", "QueryWorkGroupName"}


def test_the_glue_table_columns_match_the_row_schema_field_by_field(template: dict[str, Any]) -> None:
    from labeler.logic.index_rows import INDEX_COLUMNS, INDEX_TABLE, PARTITION_COLUMN, hive_type

    table = props(template, "IndexTable")["TableInput"]
    assert table["Name"] == INDEX_TABLE
    columns = table["StorageDescriptor"]["Columns"]
    assert [c["Name"] for c in columns] == [c.name for c in INDEX_COLUMNS]
    for declared, column in zip(columns, INDEX_COLUMNS, strict=True):
        assert declared["Type"] == hive_type(column.type), column.name
        assert declared["Comment"] == column.comment, column.name
    assert table["PartitionKeys"] == [
        {"Name": PARTITION_COLUMN.name, "Type": hive_type(PARTITION_COLUMN.type), "Comment": PARTITION_COLUMN.comment}
    ]


def test_the_glue_table_reads_the_index_prefix_with_the_openx_serde_and_projects_dt(template: dict[str, Any]) -> None:
    from labeler.logic.index_rows import INDEX_PREFIX

    table = props(template, "IndexTable")
    assert table["DatabaseName"] == {"Ref": "QueryDatabase"}
    table_input = table["TableInput"]
    assert table_input["TableType"] == "EXTERNAL_TABLE"
    storage = table_input["StorageDescriptor"]
    assert storage["Location"] == {"Fn::Sub": f"s3://${{OutputBucket}}/{INDEX_PREFIX}"}
    assert storage["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    assert storage["InputFormat"] == "org.apache.hadoop.mapred.TextInputFormat"
    assert storage["OutputFormat"] == "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
    parameters = table_input["Parameters"]
    assert parameters["projection.enabled"] == "true"
    assert parameters["projection.dt.type"] == "date"
    assert parameters["projection.dt.format"] == "yyyy-MM-dd"  # index_rows writes date.isoformat()
    assert parameters["projection.dt.range"] == {"Fn::Sub": "${IndexStartDate},NOW"}
    assert (parameters["projection.dt.interval"], parameters["projection.dt.interval.unit"]) == ("1", "DAYS")
    # ${!dt} is a literal ${dt} for Athena once CloudFormation has substituted the bucket.
    assert parameters["storage.location.template"] == {"Fn::Sub": f"s3://${{OutputBucket}}/{INDEX_PREFIX}dt=${{!dt}}/"}
    # No crawler, no partitions to maintain.
    assert not resources(template, "AWS::Glue::Crawler") and not resources(template, "AWS::Glue::Partition")


def test_the_workgroup_enforces_its_result_location_encryption_and_scan_cutoff(template: dict[str, Any]) -> None:
    config = props(template, "QueryWorkGroup")["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["BytesScannedCutoffPerQuery"] == {"Ref": "AthenaBytesScannedCutoff"}
    assert template["Parameters"]["AthenaBytesScannedCutoff"]["MinValue"] == 10485760  # Athena's minimum, 10 MB
    results = config["ResultConfiguration"]
    assert results["OutputLocation"] == {"Fn::Sub": "s3://${OutputBucket}/athena-results/"}
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    assert results["ExpectedBucketOwner"] == {"Ref": "AWS::AccountId"}
    rules = {rule["Id"]: rule for rule in props(template, "OutputBucket")["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-athena-results"]["Prefix"] == "athena-results/"
    assert rules["expire-athena-results"]["ExpirationInDays"] == {"Ref": "QueryResultDays"}
    assert not any(rule.get("Prefix", "").startswith("index") for rule in rules.values())  # the index is kept


def test_every_named_query_is_the_shared_definition_character_for_character(template: dict[str, Any]) -> None:
    from labeler.local.named_queries import NAMED_QUERIES, TEMPLATE_RESOURCES

    declared = resources(template, "AWS::Athena::NamedQuery")
    assert set(declared) == set(TEMPLATE_RESOURCES.values())
    for name, logical_id in TEMPLATE_RESOURCES.items():
        p = declared[logical_id]["Properties"]
        assert p["Name"] == name
        assert p["QueryString"].rstrip("\n") == NAMED_QUERIES[name].sql
        assert p["Database"] == {"Ref": "QueryDatabase"} and p["WorkGroup"] == {"Ref": "QueryWorkGroup"}
        for parameter in NAMED_QUERIES[name].parameters:  # the console shows the description: it names them
            assert parameter.name in p["Description"], (name, parameter.name)
    # The issue's four questions, at least.
    assert {"images_with_label", "label_frequencies", "errors_by_code", "labels_changed"} <= set(NAMED_QUERIES)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_functions_get_no_athena_or_glue_rights(transformed: dict[str, Any], function: str) -> None:
    granted = {action for s in role_statements(transformed, function) for action in as_list(s["Action"])}
    assert not {a for a in granted if a.split(":")[0] in {"athena", "glue"}}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_index_rows_are_put_under_index_only(transformed: dict[str, Any], function: str) -> None:
    statement = statement_by_sid(transformed, function, "WriteIndexRows")
    assert statement["Action"] == "s3:PutObject"
    assert statement["Resource"] == {"Fn::Sub": "${OutputBucket.Arn}/index/*"}
    assert "Condition" not in statement
    # Nothing else may touch index/ (no Get, no Delete), nor athena-results/ (the query user's).
    for s in role_statements(transformed, function):
        text = json.dumps(s["Resource"])
        if "/index/" in text:
            assert s is statement
        assert "athena-results" not in text


@pytest.mark.parametrize("function", FUNCTIONS)
def test_completion_events_go_to_the_default_bus_only_with_our_source(
    transformed: dict[str, Any], function: str
) -> None:
    from labeler.adapters.events import DETAIL_TYPE_FAILED, DETAIL_TYPE_LABELED, SOURCE

    statement = statement_by_sid(transformed, function, "PutCompletionEventsOnTheDefaultBus")
    assert statement["Action"] == "events:PutEvents"
    assert statement["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default"
    }
    assert statement["Condition"] == {
        "StringEquals": {"events:source": SOURCE, "events:detail-type": [DETAIL_TYPE_LABELED, DETAIL_TYPE_FAILED]}
    }
    events_statements = [s for s in role_statements(transformed, function) if "events:" in json.dumps(s["Action"])]
    assert events_statements == [statement]


def test_the_completion_queue_gets_this_stacks_completion_events_and_nothing_else(template: dict[str, Any]) -> None:
    from labeler.local.events import COMPLETION_EVENT_PATTERN

    assert template["Parameters"]["CompletionQueue"]["Default"] == "Enabled"
    assert template["Conditions"]["HasCompletionQueue"] == {"Fn::Equals": [{"Ref": "CompletionQueue"}, "Enabled"]}
    for name in ("CompletionEventsQueue", "CompletionEventsRule", "CompletionEventsQueuePolicy"):
        assert template["Resources"][name]["Condition"] == "HasCompletionQueue", name
    rule = props(template, "CompletionEventsRule")
    assert (rule["EventBusName"], rule["State"]) == ("default", "ENABLED")
    assert rule["EventPattern"] == {
        **COMPLETION_EVENT_PATTERN,
        "detail": {"report": {"bucket": [{"Ref": "OutputBucket"}]}},
    }
    assert rule["Targets"] == [{"Id": "completion-queue", "Arn": {"Fn::GetAtt": ["CompletionEventsQueue", "Arn"]}}]
    queue = props(template, "CompletionEventsQueue")
    assert queue["SqsManagedSseEnabled"] is True and queue["MessageRetentionPeriod"] == 3600
    allow, deny = props(template, "CompletionEventsQueuePolicy")["PolicyDocument"]["Statement"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"} and allow["Action"] == "sqs:SendMessage"
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["CompletionEventsRule", "Arn"]}}}
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    output = template["Outputs"]["CompletionQueueUrl"]
    assert output["Condition"] == "HasCompletionQueue" and output["Value"] == {"Ref": "CompletionEventsQueue"}


def test_the_completion_rule_routes_the_events_the_functions_put_for_this_stack_only(template: dict[str, Any]) -> None:
    from labeler.adapters.events import CompletionEvents
    from labeler.local.embedded_aws import EmbeddedAws
    from labeler.local.events import CompletionWaiter

    pattern = json.loads(
        json.dumps(props(template, "CompletionEventsRule")["EventPattern"]).replace(
            json.dumps({"Ref": "OutputBucket"}), json.dumps("this-stack-output")
        )
    )
    report = {"manifest": {"bucket": "in", "key": "m.json", "etag": "e1"}, "status": "complete", "total": 1}
    with EmbeddedAws(set_environment=False) as aws:
        queue_url = aws.route_events_to_queue("template-rule", pattern, "template-rule-queue")
        for bucket in ("another-stack-output", "this-stack-output"):
            CompletionEvents(aws.client("events"), output_bucket=bucket).publish(report, "reports/m.json")
        sqs = aws.client("sqs")
        event = CompletionWaiter(sqs, queue_url, manifest=("in", "m.json")).wait(timeout_seconds=10)
        assert event is not None and event["detail"]["report"]["bucket"] == "this-stack-output"
        assert not sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages")


SOURCE_CASES = [
    ([""], "aws", None),
    (["photos-a"], "aws", ["arn:aws:s3:::photos-a/*"]),
    (["photos-a", "photos.b"], "aws", ["arn:aws:s3:::photos-a/*", "arn:aws:s3:::photos.b/*"]),
    (["photos-a", "photos-b"], "aws-cn", ["arn:aws-cn:s3:::photos-a/*", "arn:aws-cn:s3:::photos-b/*"]),
    (["photos-a"], "aws-us-gov", ["arn:aws-us-gov:s3:::photos-a/*"]),
]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(("names", "partition", "expected"), SOURCE_CASES)
def test_source_buckets_grant_reads_of_exactly_those_buckets(
    template: dict[str, Any],
    transformed: dict[str, Any],
    function: str,
    names: list[str],
    partition: str,
    expected: list[str] | None,
) -> None:
    parameter = template["Parameters"]["SourceBuckets"]
    assert parameter["Type"] == "CommaDelimitedList" and parameter["Default"] == ""
    role = transformed["Resources"][f"{function}Role"]["Properties"]
    conditional = [
        s
        for policy in role["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
        if "Fn::If" in s and s["Fn::If"][1].get("Sid") == "ReadSourceBuckets"
    ]
    assert len(conditional) == 1
    name, granted, otherwise = conditional[0]["Fn::If"]
    assert name == "HasSourceBuckets" and otherwise == {"Ref": "AWS::NoValue"}
    assert granted["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]  # no List, no Put, no Delete
    parameters = {"SourceBuckets": names, "AWS::Partition": partition}
    conditions = template["Conditions"]
    if expected is None:  # empty: the statement is left out, never "*"
        assert not condition(name, parameters, conditions)
        return
    assert condition(name, parameters, conditions)
    assert resolve(granted["Resource"], parameters, conditions) == expected


def test_the_allow_list_reaches_the_functions_as_settings(template: dict[str, Any]) -> None:
    for function in FUNCTIONS:
        assert function_env(template, function)["SOURCE_BUCKETS"] == {"Fn::Join": [",", {"Ref": "SourceBuckets"}]}
    settings = Settings.from_env({"OUTPUT_BUCKET": "out", "SOURCE_BUCKETS": "photos-a, photos-b,,"})
    assert settings.source_bucket_names == {"photos-a", "photos-b"}
    assert Settings.from_env({"OUTPUT_BUCKET": "out"}).source_bucket_names == frozenset()


# --- issue 11: scheduled re-checks of watch/ (docs/recheck.md) -----------------------------------------
def test_the_re_check_schedule_is_a_parameter_on_by_default_and_off_removes_it(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["RecheckSchedule"]
    assert parameter["Default"] == "rate(1 day)"
    pattern = parameter["AllowedPattern"]
    for accepted in ("rate(1 day)", "rate(12 hours)", "cron(0 3 * * ? *)", "off"):
        assert re.fullmatch(pattern, accepted), accepted
    for refused in ("", "daily", "rate(1 day) ", "OFF"):
        assert not re.fullmatch(pattern, refused), refused
    for name in ("RecheckScheduleRole", "WatchedManifestsSchedule"):
        assert template["Resources"][name]["Condition"] == "RecheckOn"
    assert template["Outputs"]["WatchedManifestsScheduleArn"]["Condition"] == "RecheckOn"
    assert condition("RecheckOn", {"RecheckSchedule": "rate(1 day)"}, template["Conditions"])
    assert not condition("RecheckOn", {"RecheckSchedule": "off"}, template["Conditions"])


def test_the_schedule_sends_the_tick_the_handler_reads_with_retries_and_a_dead_letter_queue(
    template: dict[str, Any],
) -> None:
    from labeler.logic.recheck import EVENT_KEY, WATCH_PREFIX, RecheckRequest

    schedule = props(template, "WatchedManifestsSchedule")
    assert schedule["ScheduleExpression"] == {"Ref": "RecheckSchedule"}
    assert (schedule["ScheduleExpressionTimezone"], schedule["State"]) == ("UTC", "ENABLED")
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["ManifestFunction", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["RecheckScheduleRole", "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["FailureQueue", "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    text = target["Input"]["Fn::Sub"]
    # what EventBridge Scheduler delivers: the bucket resolved, the scheduled time in place of its placeholder
    delivered = json.loads(
        text.replace("${InputBucket}", "my-input").replace("<aws.scheduler.scheduled-time>", "2026-11-26T00:00:00Z")
    )
    request = RecheckRequest.from_event(delivered[EVENT_KEY])
    assert (request.bucket, request.prefix, request.key) == ("my-input", WATCH_PREFIX, None)
    assert request.at == "20261126T000000.000Z"


def test_the_scheduler_role_may_invoke_the_manifest_function_and_dead_letter_and_nothing_else(
    template: dict[str, Any],
) -> None:
    role = props(template, "RecheckScheduleRole")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    granted = {(action, json.dumps(s["Resource"])) for s in statements for action in as_list(s["Action"])}
    assert granted == {
        ("lambda:InvokeFunction", json.dumps({"Fn::GetAtt": ["ManifestFunction", "Arn"]})),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["FailureQueue", "Arn"]})),
    }


def test_the_manifest_function_may_list_the_input_bucket_for_the_tick(transformed: dict[str, Any]) -> None:
    # ListObjectsV2 of watch/: the ListBucket the function already holds so that a missing manifest is a 404
    # (that check cannot carry an s3:prefix condition, so the listing is not narrower than it)
    listing = statement_by_sid(transformed, "ManifestFunction", "ManifestMissingIs404")
    assert listing["Action"] == "s3:ListBucket" and "Condition" not in listing
    assert "-input-${AWS::AccountId}-${AWS::Region}" in json.dumps(listing["Resource"])
    assert not allows(role_statements(transformed, "WorkerFunction"), "s3:ListBucket", "InputBucket")
