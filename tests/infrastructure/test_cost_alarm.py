"""The optional cost alarm in template.yaml: off by default, and watching DetectLabelsCalls exactly as emitted."""

from __future__ import annotations

import re
from typing import Any

import pytest


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][name].get("Properties", {})
    return properties


ALARM = "DetectLabelsCallsAlarm"


def test_the_cost_alarm_is_off_by_default_and_switched_on_by_its_threshold(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["DetectLabelsAlarmCallsPerHour"]["Type"] == "Number"
    assert parameters["DetectLabelsAlarmCallsPerHour"]["Default"] == 0  # off unless asked for
    assert parameters["DetectLabelsAlarmCallsPerHour"]["MinValue"] == 0
    assert parameters["DetectLabelsAlarmTopicArn"]["Default"] == ""
    conditions = template["Conditions"]
    assert conditions["DetectLabelsAlarmOn"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "DetectLabelsAlarmCallsPerHour"}, 0]}]
    }
    assert conditions["DetectLabelsAlarmNotifies"] == {
        "Fn::And": [
            {"Condition": "DetectLabelsAlarmOn"},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "DetectLabelsAlarmTopicArn"}, ""]}]},
        ]
    }
    assert template["Resources"][ALARM]["Condition"] == "DetectLabelsAlarmOn"
    assert template["Outputs"]["DetectLabelsCallsAlarmName"]["Condition"] == "DetectLabelsAlarmOn"
    # The only resource that depends on the alarm's parameters is the alarm itself.
    conditional = {
        name for name, res in template["Resources"].items() if res.get("Condition", "").startswith("DetectLabels")
    }
    assert conditional == {ALARM}


@pytest.mark.parametrize(
    ("arn", "valid"),
    [
        ("", True),
        ("arn:aws:sns:eu-west-1:123456789012:labeler-cost", True),
        ("arn:aws-us-gov:sns:us-gov-west-1:123456789012:cost.fifo", True),
        ("arn:aws:sqs:eu-west-1:123456789012:not-a-topic", False),
        ("labeler-cost", False),
        ("arn:aws:sns:eu-west-1:1234:short-account", False),
    ],
)
def test_the_alarm_topic_must_be_an_sns_topic_arn(template: dict[str, Any], arn: str, valid: bool) -> None:
    pattern = template["Parameters"]["DetectLabelsAlarmTopicArn"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, arn)) is valid


def test_the_alarm_sums_calls_per_hour_above_the_threshold_and_notifies_the_topic(template: dict[str, Any]) -> None:
    alarm = props(template, ALARM)
    assert alarm["Statistic"] == "Sum"
    assert alarm["Period"] == 3600 and alarm["EvaluationPeriods"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Threshold"] == {"Ref": "DetectLabelsAlarmCallsPerHour"}
    assert alarm["TreatMissingData"] == "notBreaching"  # an hour without calls publishes nothing: not an alarm
    assert alarm["AlarmActions"] == {
        "Fn::If": ["DetectLabelsAlarmNotifies", [{"Ref": "DetectLabelsAlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
    }
    assert "Metrics" not in alarm  # a plain metric: no metric math needed for a sum per hour


def test_the_alarm_watches_the_metric_exactly_as_powertools_emits_it(template: dict[str, Any]) -> None:
    """Namespace, name and the full dimension set must match the EMF the functions print, or the alarm sees nothing."""
    from labeler import observability

    env = template["Globals"]["Function"]["Environment"]["Variables"]
    alarm = props(template, ALARM)
    observability.metrics.clear_metrics()
    try:
        observability.publish_label_calls(calls=3, saved=2)
        emf = observability.metrics.serialize_metric_set()
    finally:
        observability.metrics.clear_metrics()
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert {metric["Name"] for metric in directive["Metrics"]} == {"DetectLabelsCalls", "DetectLabelsSaved"}
    assert (emf["DetectLabelsCalls"], emf["DetectLabelsSaved"]) == ([3.0], [2.0])
    assert directive["Dimensions"] == [["service"]]  # Powertools' one default dimension, nothing else
    assert alarm["MetricName"] == observability.DETECT_LABELS_CALLS
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    # The functions' service name is the one the code falls back to, so local runs publish the same series.
    assert emf["service"] == observability.SERVICE == env["POWERTOOLS_SERVICE_NAME"]


def test_the_alarm_survives_the_sam_transform(transformed: dict[str, Any]) -> None:
    alarm = transformed["Resources"][ALARM]
    assert alarm["Type"] == "AWS::CloudWatch::Alarm" and alarm["Condition"] == "DetectLabelsAlarmOn"
    assert "DetectLabelsAlarmNotifies" in transformed["Conditions"]
