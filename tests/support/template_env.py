"""The functions as ``sam deploy`` configures them, read from template.yaml: handler, timeout, memory, environment.

Used wherever the project runs a function outside Lambda and must run it *as deployed*: the
benchmarks (``bench/``), ``make local-invoke`` (``scripts/local_invoke.py``) and their tests.
Nothing is copied from the template by hand, so whatever the template says at run time is
what runs: a parameter added, a default changed or a variable removed is picked up as it is.

* Environment: ``Globals.Function.Environment.Variables`` merged with the function's own
  ``Environment.Variables`` (the function's win, as SAM merges them).
* Every intrinsic is resolved the way CloudFormation would resolve it at a deploy with no
  parameter overrides: ``!Ref Parameter`` → the parameter's ``Default``; ``!Ref``/``!GetAtt``
  of a resource → the name/URL/ARN of its *local stand-in*, asked of a :class:`ResourceLookup`
  (``tests/support/stack_standins.py`` creates them on the embedded endpoint on demand);
  ``!Sub``, ``!If`` (with ``Conditions``), ``!FindInMap``, ``!Join``, ``!Select``, ``!Split``,
  ``!Equals``, ``!Not``, ``!And``, ``!Or`` and the pseudo parameters. Anything else raises
  :class:`TemplateError` naming the variable, never a silent guess.
* :func:`deployed_environment` adds only what a harness *must* change (endpoints,
  ``ALLOW_PRIVATE_NETWORKS``, ``REKOGNITION_MAX_TPS`` = the stand-in's quota) and keeps every
  other override apart as a *diagnostic*, so a figure measured with one can never pass for one
  measured at the defaults.

>>> template = Template.load()                                          # doctest: +SKIP
>>> template.function("ManifestFunction", stack).environment["MAX_WORKERS"]   # doctest: +SKIP
'8'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account: ARNs the embedded endpoint hands out use it
STACK_NAME = "s3-image-labeler"

_NO_VALUE = object()  # AWS::NoValue: the property (or variable) is left out

# What a harness must set whatever the template says: the image host is on loopback.
REQUIRED_OVERRIDES = {"ALLOW_PRIVATE_NETWORKS": "true"}
QUOTA_VARIABLE = "REKOGNITION_MAX_TPS"
ENDPOINT_SERVICES = ("S3", "SQS", "DYNAMODB", "REKOGNITION", "EVENTBRIDGE")


class TemplateError(ValueError):
    """The template holds something this reader cannot resolve (it says what and where)."""


class ResourceLookup(Protocol):
    """Names the local stand-in of a template resource: what ``!Ref`` and ``!GetAtt`` give."""

    def ref(self, logical_id: str) -> str: ...

    def attribute(self, logical_id: str, name: str) -> str: ...


class Placeholders:
    """A :class:`ResourceLookup` that creates nothing: ``<WorkQueue>``, ``<WorkQueue.Arn>`` (for showing a template)."""

    def ref(self, logical_id: str) -> str:
        return f"<{logical_id}>"

    def attribute(self, logical_id: str, name: str) -> str:
        return f"<{logical_id}.{name}>"


@dataclass(frozen=True)
class FunctionConfig:
    """One ``AWS::Serverless::Function`` as deployed with the template's defaults."""

    logical_id: str
    handler: str
    runtime: str
    timeout_seconds: int
    memory_mb: int
    environment: dict[str, str]

    @property
    def function_name(self) -> str:
        return f"{STACK_NAME}-{self.logical_id}"

    def runtime_variables(self, task_root: Path) -> dict[str, str]:
        """What the Lambda service sets for the function's runtime (credentials are dummies: nothing reaches AWS)."""
        return {
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.timeout_seconds),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{self.runtime}",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_SESSION_TOKEN": "local",
            "AWS_EC2_METADATA_DISABLED": "true",
            "LAMBDA_TASK_ROOT": str(task_root),
            "LAMBDA_RUNTIME_DIR": str(task_root),
            "PYTHONPATH": str(task_root),  # /var/task comes first on a Lambda's sys.path
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
        }


@dataclass(frozen=True)
class FunctionEnvironment:
    """A function's environment for a local run: the template's, plus recorded overrides."""

    function: str
    from_template: dict[str, str]
    harness: dict[str, str]
    diagnostic: dict[str, str] = field(default_factory=dict)

    @property
    def variables(self) -> dict[str, str]:
        return {**self.from_template, **self.harness, **self.diagnostic}

    @property
    def as_deployed(self) -> bool:
        """True when nothing but what a harness must change differs from the template."""
        return not self.diagnostic

    def describe(self) -> dict[str, Any]:
        """For results: what the template set, and each override next to the template's value."""

        def beside(values: Mapping[str, str]) -> dict[str, dict[str, str | None]]:
            return {name: {"template": self.from_template.get(name), "set": value} for name, value in values.items()}

        return {
            "function": self.function,
            "as_deployed": self.as_deployed,
            "harness_overrides": beside(
                {name: value for name, value in self.harness.items() if not name.startswith("AWS_ENDPOINT_URL_")}
            ),
            "diagnostic_overrides": beside(self.diagnostic),
        }


def deployed_environment(
    config: FunctionConfig,
    *,
    endpoints: Mapping[str, str],
    rekognition_max_tps: float,
    diagnostic: Mapping[str, str] | None = None,
) -> FunctionEnvironment:
    """``config``'s environment pointed at local stand-ins.

    ``endpoints``: service → URL (``S3``, ``SQS``, ``DYNAMODB``, ``REKOGNITION``), set as
    ``AWS_ENDPOINT_URL_<SERVICE>``. ``rekognition_max_tps``: the stand-in's quota, which the
    function must be told as the deployed one is told the account's. ``diagnostic``: any other
    change, kept apart (:attr:`FunctionEnvironment.as_deployed` is then False).
    """
    unknown = set(endpoints) - set(ENDPOINT_SERVICES)
    if unknown:
        raise ValueError(f"unknown endpoint services {sorted(unknown)}; known: {ENDPOINT_SERVICES}")
    harness = {f"AWS_ENDPOINT_URL_{service}": url for service, url in endpoints.items()}
    harness.update(REQUIRED_OVERRIDES)
    harness[QUOTA_VARIABLE] = f"{rekognition_max_tps:g}"
    extra = dict(diagnostic or {})
    clash = set(extra) & set(harness)
    if clash:
        raise ValueError(f"{sorted(clash)} are set by the harness itself, not as diagnostics")
    return FunctionEnvironment(config.logical_id, dict(config.environment), harness, extra)


class Template:
    """template.yaml, decoded (short-form tags become ``{"Ref": ...}``, ``{"Fn::Sub": ...}``)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.parameters: dict[str, Any] = dict(document.get("Parameters") or {})
        self.resources: dict[str, Any] = dict(document.get("Resources") or {})
        self.conditions: dict[str, Any] = dict(document.get("Conditions") or {})
        self.mappings: dict[str, Any] = dict(document.get("Mappings") or {})
        self.globals: dict[str, Any] = dict((document.get("Globals") or {}).get("Function") or {})

    @classmethod
    def load(cls, path: Path = TEMPLATE) -> Template:
        from cfnlint.decode import decode

        decoded, problems = decode(str(path))
        if problems or decoded is None:
            raise TemplateError(f"{path}: {'; '.join(str(problem) for problem in problems or [])}")
        return cls(json.loads(json.dumps(decoded)))  # cfn-lint's marked nodes → plain data

    # --- what the template declares ---------------------------------------------------------------
    def parameter_defaults(self) -> dict[str, Any]:
        return {name: spec.get("Default") for name, spec in self.parameters.items()}

    def functions(self) -> list[str]:
        return [name for name, spec in self.resources.items() if spec.get("Type") == "AWS::Serverless::Function"]

    def resource(self, logical_id: str) -> dict[str, Any]:
        try:
            spec: dict[str, Any] = self.resources[logical_id]
        except KeyError:
            raise TemplateError(f"no resource {logical_id!r} in the template") from None
        return spec

    def function(self, logical_id: str, resources: ResourceLookup) -> FunctionConfig:
        """The function's handler, runtime, timeout, memory and resolved environment."""
        spec = self.resource(logical_id)
        if spec.get("Type") != "AWS::Serverless::Function":
            raise TemplateError(f"{logical_id} is a {spec.get('Type')}, not an AWS::Serverless::Function")
        props = spec.get("Properties") or {}

        def setting(name: str) -> Any:
            value = props.get(name, self.globals.get(name))
            if value is None:
                raise TemplateError(f"{logical_id} has no {name} (neither in its Properties nor in Globals)")
            return self.resolve(value, resources, where=f"{logical_id}.{name}")

        variables = {
            **((self.globals.get("Environment") or {}).get("Variables") or {}),
            **((props.get("Environment") or {}).get("Variables") or {}),
        }
        environment = {}
        for name, raw in variables.items():
            value = self.resolve(raw, resources, where=f"{logical_id} environment variable {name}")
            if value is not _NO_VALUE:
                environment[name] = _as_text(value)
        return FunctionConfig(
            logical_id=logical_id,
            handler=str(setting("Handler")),
            runtime=str(setting("Runtime")),
            timeout_seconds=int(setting("Timeout")),
            memory_mb=int(setting("MemorySize")),
            environment=environment,
        )

    def event_source_mapping(self, function: str, resources: ResourceLookup) -> dict[str, Any]:
        """The queue (logical id), ``BatchSize`` and ``MaximumConcurrency`` of the mapping that invokes ``function``.

        The template declares it as a plain ``AWS::Lambda::EventSourceMapping`` (or as an SQS event of
        the function); ``MaximumConcurrency`` is None when the mapping sets no ScalingConfig.
        """
        for name, spec in self.resources.items():
            props = spec.get("Properties") or {}
            target = props.get("FunctionName")
            if spec.get("Type") == "AWS::Lambda::EventSourceMapping" and target in (
                {"Ref": function},
                {"Fn::GetAtt": [function, "Arn"]},
                {"Fn::GetAtt": f"{function}.Arn"},
            ):
                return self._mapping_settings(name, props, resources)
        for event_name, event in ((self.resource(function).get("Properties") or {}).get("Events") or {}).items():
            if event.get("Type") == "SQS":
                return self._mapping_settings(
                    f"{function}.Events.{event_name}", event.get("Properties") or {}, resources
                )
        raise TemplateError(f"no SQS event source mapping invokes {function}")

    def _mapping_settings(self, where: str, props: Mapping[str, Any], resources: ResourceLookup) -> dict[str, Any]:
        scaling = props.get("ScalingConfig") or {}
        concurrency = scaling.get("MaximumConcurrency")
        source = props.get("EventSourceArn", props.get("Queue"))
        queue = None
        if isinstance(source, dict) and "Fn::GetAtt" in source:
            target = source["Fn::GetAtt"]
            queue = target.split(".", 1)[0] if isinstance(target, str) else target[0]
        return {
            "mapping": where,
            "queue": queue,
            "batch_size": int(self.resolve(props.get("BatchSize", 10), resources, where=f"{where}.BatchSize")),
            "maximum_concurrency": (
                int(self.resolve(concurrency, resources, where=f"{where}.MaximumConcurrency"))
                if concurrency is not None
                else None
            ),
        }

    def s3_event_buckets(self, function: str) -> list[str]:
        """Logical ids of the buckets whose S3 events invoke ``function`` (``Events: {Type: S3}``)."""
        found = []
        for event in ((self.resource(function).get("Properties") or {}).get("Events") or {}).values():
            bucket = (event.get("Properties") or {}).get("Bucket")
            named = bucket.get("Ref") if isinstance(bucket, dict) else None
            if event.get("Type") == "S3" and named and named not in found:
                found.append(named)
        return found

    def property(self, logical_id: str, path: str, resources: ResourceLookup, default: Any = None) -> Any:
        """A resolved property of a resource by dotted path (``"VersioningConfiguration.Status"``)."""
        node: Any = self.resource(logical_id).get("Properties") or {}
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        value = self.resolve(node, resources, where=f"{logical_id}.{path}")
        return default if value is _NO_VALUE else value

    # --- intrinsic functions ------------------------------------------------------------------------
    def resolve(self, value: Any, resources: ResourceLookup, *, where: str = "the template") -> Any:
        """``value`` with every intrinsic function resolved (lists and maps recursively)."""
        if isinstance(value, list):
            items = [self.resolve(item, resources, where=where) for item in value]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((name, argument),) = value.items()
            if name == "Ref" or name.startswith("Fn::") or name == "Condition":
                return self._intrinsic(name, argument, resources, where)
        resolved = {key: self.resolve(item, resources, where=where) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}

    def _intrinsic(self, name: str, arg: Any, resources: ResourceLookup, where: str) -> Any:
        def again(item: Any) -> Any:
            return self.resolve(item, resources, where=where)

        if name == "Ref":
            return self._ref(str(arg), resources, where)
        if name == "Fn::GetAtt":
            logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else (arg[0], again(arg[1]))
            return resources.attribute(logical_id, attribute)
        if name == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], {k: again(v) for k, v in arg[1].items()})
            return self._sub(text, names, resources, where)
        if name == "Fn::If":
            condition, when_true, when_false = arg
            return again(when_true if self.condition(condition, resources) else when_false)
        if name == "Fn::FindInMap":
            mapping, first, second = (again(item) for item in arg)
            try:
                return again(self.mappings[mapping][_as_text(first)][_as_text(second)])
            except KeyError:
                raise TemplateError(f"{where}: no {mapping}[{first}][{second}] in Mappings") from None
        if name == "Fn::Join":
            delimiter, items = arg
            return str(delimiter).join(_as_text(item) for item in again(items))
        if name == "Fn::Select":
            index, items = arg
            return again(items)[int(again(index))]
        if name == "Fn::Split":
            delimiter, text = arg
            return _as_text(again(text)).split(delimiter)
        if name in {"Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"}:
            return self._condition_value(name, arg, resources)
        raise TemplateError(f"{where}: {name} is not supported by this reader")

    def _ref(self, name: str, resources: ResourceLookup, where: str) -> Any:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::StackName": STACK_NAME,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{STACK_NAME}/local",
        }
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            if "Default" not in self.parameters[name]:
                raise TemplateError(f"{where}: parameter {name} has no Default (sam deploy would ask for it)")
            return self.parameters[name]["Default"]
        if name in self.resources:
            return resources.ref(name)
        raise TemplateError(f"{where}: !Ref {name} names neither a parameter nor a resource")

    def _sub(self, text: str, names: Mapping[str, Any], resources: ResourceLookup, where: str) -> str:
        out, position = [], 0
        while True:
            start = text.find("${", position)
            if start < 0:
                out.append(text[position:])
                return "".join(out)
            end = text.index("}", start)
            out.append(text[position:start])
            token = text[start + 2 : end]
            if token.startswith("!"):  # ${!Literal} is written as ${Literal}
                out.append("${" + token[1:] + "}")
            elif token in names:
                out.append(_as_text(names[token]))
            elif "." in token and token.split(".", 1)[0] in self.resources:
                logical_id, attribute = token.split(".", 1)
                out.append(resources.attribute(logical_id, attribute))
            else:
                out.append(_as_text(self._ref(token, resources, where)))
            position = end + 1

    def condition(self, name: str, resources: ResourceLookup) -> bool:
        try:
            return bool(self._condition_value("Condition", name, resources))
        except RecursionError:  # pragma: no cover - a template with a condition loop does not deploy either
            raise TemplateError(f"condition {name} refers to itself") from None

    def _condition_value(self, name: str, arg: Any, resources: ResourceLookup) -> bool:
        if name == "Condition":
            if arg not in self.conditions:
                raise TemplateError(f"no condition {arg!r} in Conditions")
            ((inner, inner_arg),) = self.conditions[arg].items()
            return self._condition_value(inner, inner_arg, resources)
        if name == "Fn::Equals":
            left, right = (self.resolve(item, resources, where=f"condition {arg}") for item in arg)
            return _as_text(left) == _as_text(right)
        values = [self._condition_value(*next(iter(item.items())), resources) for item in arg]
        if name == "Fn::Not":
            return not values[0]
        if name == "Fn::And":
            return all(values)
        return any(values)  # Fn::Or


def _as_text(value: Any) -> str:
    """A value as CloudFormation hands it to Lambda: numbers and booleans become their JSON text."""
    if value is _NO_VALUE:
        raise TemplateError("AWS::NoValue where a value is required")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise TemplateError(f"a structured value where text is required: {value!r}")
    return str(value)
