"""The SAM template as localfaas runs it: functions, layers, URLs, MQ and Schedule events.

`load_template` reads the file, applies Globals and parameters, resolves intrinsics and returns
frozen specs. Everything the template says that localfaas does not emulate ends up in
`Template.warnings`, by name, so that nothing is silently ignored.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localfaas.aws import ACCOUNT_ID, function_arn, layer_arn, stack_id
from localfaas.cfn import NO_VALUE, Intrinsics, TemplateError, load_yaml
from localfaas.schedule_expression import parse_schedule
from localfaas.settings import parameter_key

DEFAULT_TIMEOUT = 3
DEFAULT_MEMORY_MB = 128

_SUPPORTED_FUNCTION_PROPERTIES = {
    "CodeUri", "Handler", "Runtime", "Timeout", "MemorySize", "Environment", "Layers",
    "ReservedConcurrentExecutions", "FunctionUrlConfig", "Events", "FunctionName", "Description",
    "ProvisionedConcurrencyConfig",
}
# Properties that only matter to AWS's control plane (IAM, tagging, networking, tracing): they
# are accepted, and named in the start-up report as having no local effect.
_NO_LOCAL_EFFECT = {
    "Policies", "Role", "Tags", "Architectures", "Tracing", "PropagateTags", "EphemeralStorage",
    "LoggingConfig", "VpcConfig", "PermissionsBoundary", "KmsKeyArn", "RolePath",
    "AutoPublishAlias", "DeploymentPreference", "RuntimeManagementConfig", "RecursiveLoop",
}
_MQ_PROPERTIES = {
    "Broker", "Queues", "SourceAccessConfigurations", "BatchSize",
    "MaximumBatchingWindowInSeconds", "Enabled", "DynamicPolicyName",
}
_SCHEDULE_PROPERTIES = {"Schedule", "Input", "Enabled", "State", "Name", "Description"}
# Accepted on Schedule events with no local effect: retries/DLQ of EventBridge itself.
_CORS_FIELDS = {
    "AllowOrigins", "AllowMethods", "AllowHeaders", "ExposeHeaders", "AllowCredentials", "MaxAge",
}


@dataclass(frozen=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 0


class AuthType(enum.StrEnum):
    """A function URL's FunctionUrlConfig.AuthType."""

    NONE = "NONE"  # anyone may call it
    AWS_IAM = "AWS_IAM"  # SigV4-signed by a known key (localfaas/sigv4.py)


@dataclass(frozen=True)
class UrlConfig:
    auth_type: AuthType
    invoke_mode: str = "BUFFERED"
    cors: CorsConfig | None = None


@dataclass(frozen=True)
class MqEvent:
    name: str
    broker_arn: str
    queue: str
    virtual_host: str = "/"
    batch_size: int = 100
    window_seconds: float = 0.5
    enabled: bool = True


@dataclass(frozen=True)
class ScheduleEvent:
    name: str
    expression: str
    input: Any = None
    enabled: bool = True


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    code_dir: Path
    handler: str
    runtime: str
    timeout: float
    memory_mb: int
    environment: Mapping[str, str]
    layer_dirs: tuple[Path, ...] = ()
    reserved_concurrency: int | None = None
    provisioned_concurrency: int = 0  # environments initialized before any invocation, kept warm
    url: UrlConfig | None = None
    mq_events: tuple[MqEvent, ...] = ()
    schedule_events: tuple[ScheduleEvent, ...] = ()
    description: str = ""
    region: str = "us-east-1"

    @property
    def arn(self) -> str:
        return function_arn(self.region, self.name)

    def code_sha256(self) -> str:
        """Digest of the code and layers, to tell a changed deployment from an unchanged one."""
        digest = hashlib.sha256()
        for root in (self.code_dir, *self.layer_dirs):
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    digest.update(str(path.relative_to(root)).encode())
                    digest.update(path.read_bytes())
        return digest.hexdigest()


@dataclass
class Template:
    path: Path
    functions: dict[str, FunctionSpec]
    parameters: dict[str, str]
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def function(self, name_or_arn: str) -> FunctionSpec | None:
        name = name_or_arn.split(":function:")[-1].split(":")[0]
        if name in self.functions:
            return self.functions[name]
        return next((f for f in self.functions.values() if f.logical_id == name), None)


def merge_globals(global_value: Any, local_value: Any) -> Any:
    """SAM's Globals rule: maps merge recursively, lists concatenate, anything else is replaced."""
    if _is_plain_map(global_value) and _is_plain_map(local_value):
        merged = dict(global_value)
        for key, value in local_value.items():
            merged[key] = merge_globals(global_value[key], value) if key in global_value else value
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return global_value + local_value
    return local_value


def _is_plain_map(value: Any) -> bool:
    return isinstance(value, dict) and not (
        (len(value) == 1 and next(iter(value)) in ("Ref", "Condition"))
        or any(k.startswith("Fn::") for k in value)
    )


def load_template(
    path: Path,
    settings: Mapping[str, str],
    parameter_overrides: Mapping[str, str],
    url_for: Callable[[str], str],
) -> Template:
    """Read a SAM template. `settings` (env file + environment) and `parameter_overrides` set
    parameters by name, matched with `parameter_key`; `url_for(logical_id)` gives the local URL
    of a function that has a FunctionUrlConfig."""
    document = load_yaml(path.read_text())
    return _TemplateReader(path, document, settings, parameter_overrides, url_for).read()


class _TemplateReader:
    def __init__(self, path: Path, document: dict[str, Any], settings: Mapping[str, str],
                 overrides: Mapping[str, str], url_for: Callable[[str], str]) -> None:
        self.path = path
        self.base = path.parent
        self.document = document
        self.resources: dict[str, Any] = document.get("Resources") or {}
        self.url_for = url_for
        self.warnings: list[str] = []
        self.region = settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.parameters = self._parameters(settings, overrides)
        self.intrinsics = Intrinsics(self._ref, self._get_att, document.get("Conditions"),
                                     document.get("Mappings"))

    def read(self) -> Template:
        for key in self.document:
            if key not in {"AWSTemplateFormatVersion", "Transform", "Description", "Globals",
                           "Parameters", "Resources", "Outputs", "Conditions", "Mappings",
                           "Metadata"}:
                self.warnings.append(f"template section {key} is not supported (ignored)")
        functions: dict[str, FunctionSpec] = {}
        for logical_id, resource in self.resources.items():
            kind = resource.get("Type")
            if "Condition" in resource and not self.intrinsics.condition(resource["Condition"]):
                continue
            if kind == "AWS::Serverless::Function":
                spec = self._function(logical_id, resource.get("Properties") or {})
                functions[spec.name] = spec
            elif kind != "AWS::Serverless::LayerVersion":
                self.warnings.append(f"resource {logical_id}: type {kind} is not supported (ignored)")
        outputs = {
            name: self.intrinsics.resolve(output.get("Value"))
            for name, output in (self.document.get("Outputs") or {}).items()
            if "Condition" not in output or self.intrinsics.condition(output["Condition"])
        }
        return Template(self.path, functions, self.parameters, outputs, self.warnings)

    def _parameters(self, settings: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
        declared = self.document.get("Parameters") or {}
        by_key = {parameter_key(name): name for name in declared}
        values = {name: spec.get("Default") for name, spec in declared.items()}
        for source in (settings, overrides):
            for key, value in source.items():
                if parameter_key(key) in by_key:
                    values[by_key[parameter_key(key)]] = value
        for key in overrides:
            if parameter_key(key) not in by_key:
                raise TemplateError(f"--parameter-overrides names unknown parameter {key!r}")
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise TemplateError(f"parameters without a value: {', '.join(missing)}")
        return {name: str(value) for name, value in values.items()}

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws",
            "AWS::StackName": self.path.parent.name or "localfaas", "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": stack_id(self.region, "localfaas"),
            "AWS::NoValue": NO_VALUE, "AWS::NotificationARNs": [],
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        resource = self.resources.get(name)
        if resource is None:
            raise TemplateError(f"!Ref to unknown name {name!r}")
        if resource.get("Type") == "AWS::Serverless::LayerVersion":
            return self._layer_arn(name)
        if resource.get("Type") == "AWS::Serverless::Function":
            return self._function_name(name)
        return name

    def _get_att(self, resource: str, attribute: str) -> Any:
        if resource.endswith("Url") and attribute == "FunctionUrl":
            function_id = resource[: -len("Url")]
            if function_id in self.resources:
                return self.url_for(function_id)
        if resource in self.resources and attribute == "Arn":
            return function_arn(self.region, self._function_name(resource))
        raise TemplateError(f"!GetAtt {resource}.{attribute} is not supported by localfaas")

    def _layer_arn(self, logical_id: str) -> str:
        return layer_arn(self.region, logical_id)

    def _function_name(self, logical_id: str) -> str:
        properties = self.resources[logical_id].get("Properties") or {}
        name = properties.get("FunctionName")
        return str(self.intrinsics.resolve(name)) if name else logical_id

    def _function(self, logical_id: str, local: dict[str, Any]) -> FunctionSpec:
        global_properties = (self.document.get("Globals") or {}).get("Function") or {}
        merged = {k: v for k, v in global_properties.items()}
        for key, value in local.items():
            merged[key] = merge_globals(merged[key], value) if key in merged else value
        properties = self.intrinsics.resolve(merged)
        where = f"function {logical_id}"
        for key in properties:
            if key in _NO_LOCAL_EFFECT:
                self.warnings.append(f"{where}: property {key} has no local effect (ignored)")
            elif key not in _SUPPORTED_FUNCTION_PROPERTIES:
                self.warnings.append(f"{where}: property {key} is not supported (ignored)")
        if "Handler" not in properties:
            raise TemplateError(f"{where}: Handler is required")
        code_dir = (self.base / str(properties.get("CodeUri", "."))).resolve()
        if not code_dir.is_dir():
            raise TemplateError(f"{where}: CodeUri {code_dir} is not a directory")
        variables = (properties.get("Environment") or {}).get("Variables") or {}
        events = properties.get("Events") or {}
        reserved = properties.get("ReservedConcurrentExecutions")
        return FunctionSpec(
            logical_id=logical_id,
            name=self._function_name(logical_id),
            code_dir=code_dir,
            handler=str(properties["Handler"]),
            runtime=str(properties.get("Runtime", "python3.12")),
            timeout=float(properties.get("Timeout", DEFAULT_TIMEOUT)),
            memory_mb=int(properties.get("MemorySize", DEFAULT_MEMORY_MB)),
            environment={k: _env_string(v) for k, v in variables.items()},
            layer_dirs=tuple(self._layer_dir(where, arn) for arn in properties.get("Layers") or []),
            reserved_concurrency=None if reserved is None else int(reserved),
            provisioned_concurrency=self._provisioned(where, properties),
            url=self._url_config(where, properties.get("FunctionUrlConfig")),
            mq_events=tuple(self._mq_event(where, name, event) for name, event in events.items()
                            if self._event_supported(where, name, event, "MQ")),
            schedule_events=tuple(self._schedule_event(where, name, event)
                                  for name, event in events.items()
                                  if self._event_supported(where, name, event, "Schedule")),
            description=str(properties.get("Description", "")),
            region=self.region,
        )

    def _provisioned(self, where: str, properties: dict[str, Any]) -> int:
        """ProvisionedConcurrencyConfig, checked as SAM and Lambda check it."""
        config = properties.get("ProvisionedConcurrencyConfig")
        if not config:
            return 0
        if not properties.get("AutoPublishAlias"):
            raise TemplateError(f"{where}: ProvisionedConcurrencyConfig requires AutoPublishAlias")
        count = int(config.get("ProvisionedConcurrentExecutions", 0))
        reserved = properties.get("ReservedConcurrentExecutions")
        if count < 1 or (reserved is not None and count > int(reserved)):
            raise TemplateError(f"{where}: ProvisionedConcurrentExecutions must be at least 1 and at "
                                "most ReservedConcurrentExecutions")
        return count

    def _layer_dir(self, where: str, arn: str) -> Path:
        for logical_id, resource in self.resources.items():
            if resource.get("Type") == "AWS::Serverless::LayerVersion" and self._layer_arn(logical_id) == arn:
                content = (resource.get("Properties") or {}).get("ContentUri", ".")
                path = (self.base / str(self.intrinsics.resolve(content))).resolve()
                if not path.is_dir():
                    raise TemplateError(f"layer {logical_id}: ContentUri {path} is not a directory")
                return path
        raise TemplateError(f"{where}: layer {arn} is not defined in this template; "
                            "localfaas cannot fetch published layers")

    def _url_config(self, where: str, config: dict[str, Any] | None) -> UrlConfig | None:
        if not config:
            return None
        try:
            auth_type = AuthType(config.get("AuthType"))
        except ValueError:
            raise TemplateError(f"{where}: FunctionUrlConfig.AuthType must be NONE or AWS_IAM") from None
        for key in config:
            if key not in ("AuthType", "InvokeMode", "Cors"):
                self.warnings.append(f"{where}: FunctionUrlConfig.{key} is not supported (ignored)")
        if config.get("InvokeMode", "BUFFERED") != "BUFFERED":
            self.warnings.append(f"{where}: InvokeMode {config['InvokeMode']} is served buffered")
        cors = config.get("Cors")
        if cors is not None:
            unknown = set(cors) - _CORS_FIELDS
            if unknown:
                raise TemplateError(f"{where}: unknown Cors keys {sorted(unknown)}")
            cors = CorsConfig(
                allow_origins=tuple(cors.get("AllowOrigins", ())),
                allow_methods=tuple(m.upper() for m in cors.get("AllowMethods", ())),
                allow_headers=tuple(h.lower() for h in cors.get("AllowHeaders", ())),
                expose_headers=tuple(cors.get("ExposeHeaders", ())),
                allow_credentials=bool(cors.get("AllowCredentials", False)),
                max_age=int(cors.get("MaxAge", 0)),
            )
        return UrlConfig(auth_type, str(config.get("InvokeMode", "BUFFERED")), cors)

    def _event_supported(self, where: str, name: str, event: dict[str, Any], kind: str) -> bool:
        event_type = event.get("Type")
        if event_type not in ("MQ", "Schedule"):
            if kind == "MQ":  # report once, on the first pass
                self.warnings.append(f"{where}: event {name} of type {event_type} is not supported (ignored)")
            return False
        return event_type == kind

    def _mq_event(self, where: str, name: str, event: dict[str, Any]) -> MqEvent:
        properties = event.get("Properties") or {}
        for key in set(properties) - _MQ_PROPERTIES:
            self.warnings.append(f"{where}: event {name}: MQ property {key} is not supported (ignored)")
        queues = properties.get("Queues") or []
        if len(queues) != 1:
            raise TemplateError(f"{where}: event {name}: Queues must name exactly one queue")
        virtual_host = "/"
        for access in properties.get("SourceAccessConfigurations") or []:
            if access.get("Type") == "VIRTUAL_HOST":
                virtual_host = str(access.get("URI", "/"))
        batch_size = int(properties.get("BatchSize", 100))
        if not 1 <= batch_size <= 10000:
            raise TemplateError(f"{where}: event {name}: BatchSize must be 1..10000")
        return MqEvent(
            name=name,
            broker_arn=str(properties.get("Broker", "")),
            queue=str(queues[0]),
            virtual_host=virtual_host,
            batch_size=batch_size,
            window_seconds=float(properties.get("MaximumBatchingWindowInSeconds", 0.5)),
            enabled=_truthy(properties.get("Enabled", True)),
        )

    def _schedule_event(self, where: str, name: str, event: dict[str, Any]) -> ScheduleEvent:
        properties = event.get("Properties") or {}
        for key in set(properties) - _SCHEDULE_PROPERTIES:
            self.warnings.append(f"{where}: event {name}: Schedule property {key} is not supported (ignored)")
        expression = properties.get("Schedule")
        if not expression:
            raise TemplateError(f"{where}: event {name}: Schedule is required")
        try:
            parse_schedule(str(expression))
            raw_input = properties.get("Input")
            payload = json.loads(raw_input) if isinstance(raw_input, str) else raw_input
        except ValueError as exc:
            raise TemplateError(f"{where}: event {name}: {exc}") from exc
        enabled = properties.get("Enabled", properties.get("State", "ENABLED") == "ENABLED")
        return ScheduleEvent(name=name, expression=str(expression), input=payload,
                             enabled=_truthy(enabled))


def _truthy(value: Any) -> bool:
    """A template boolean, which may arrive as a string through a parameter."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "disabled", "")
    return bool(value)


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

