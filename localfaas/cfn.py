"""CloudFormation YAML: the short-form tags and the intrinsic functions localfaas resolves.

The loader turns `!Ref X` into `{"Ref": "X"}` and `!Sub ...` into `{"Fn::Sub": ...}`, exactly
the long form CloudFormation itself uses, so the resolver only ever sees one shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

_SHORT_TAGS = {
    "Ref": "Ref",
    "Condition": "Condition",
    **{
        name: f"Fn::{name}"
        for name in (
            "Sub", "GetAtt", "Join", "If", "Equals", "Not", "And", "Or", "Select", "Split",
            "FindInMap", "ImportValue", "Base64", "GetAZs", "Cidr", "Transform", "Length",
            "ToJsonString",
        )
    },
}


class TemplateError(ValueError):
    """The template cannot be used: a message that names what is wrong and where."""


class _Loader(yaml.SafeLoader):
    pass


def _tag_constructor(long_name: str) -> Callable[[yaml.Loader, yaml.Node], Any]:
    def construct(loader: yaml.Loader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if long_name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {long_name: value}

    return construct


for _short, _long in _SHORT_TAGS.items():
    _Loader.add_constructor(f"!{_short}", _tag_constructor(_long))


def load_yaml(text: str) -> dict[str, Any]:
    document = yaml.load(text, Loader=_Loader)
    if not isinstance(document, dict):
        raise TemplateError("the template is not a mapping")
    return document


_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")

Resolver = Callable[[str], Any]


class Intrinsics:
    """Resolves intrinsic functions against parameters, conditions and resource attributes.

    `ref(name)` and `get_att(resource, attribute)` are supplied by the template model, which
    knows the resources; this class knows only the functions' semantics. A function it does not
    implement raises TemplateError naming it.
    """

    def __init__(
        self,
        ref: Resolver,
        get_att: Callable[[str, str], Any],
        conditions: Mapping[str, Any] | None = None,
        mappings: Mapping[str, Any] | None = None,
    ) -> None:
        self._ref = ref
        self._get_att = get_att
        self._conditions = dict(conditions or {})
        self._mappings = dict(mappings or {})
        self._condition_values: dict[str, bool] = {}

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Ref" or key.startswith("Fn::") or key == "Condition":
                return self._call(key, argument)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            if name not in self._conditions:
                raise TemplateError(f"unknown condition {name!r}")
            self._condition_values[name] = bool(self.resolve(self._conditions[name]))
        return self._condition_values[name]

    def _call(self, key: str, arg: Any) -> Any:
        if key == "Ref":
            return self._ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::GetAtt":
            resource, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self._get_att(resource, attribute)
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            separator, items = arg
            return separator.join(str(v) for v in self.resolve(items))
        if key == "Fn::Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if key == "Fn::Split":
            separator, text = self.resolve(arg)
            return text.split(separator)
        if key == "Fn::Equals":
            left, right = self.resolve(arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(arg)[0]
        if key == "Fn::And":
            return all(self.resolve(arg))
        if key == "Fn::Or":
            return any(self.resolve(arg))
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::FindInMap":
            table, first, second = self.resolve(arg)
            return self._mappings[table][first][second]
        raise TemplateError(f"intrinsic function {key} is not supported by localfaas")

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], self.resolve(arg[1])
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                resource, attribute = name.split(".", 1)
                return str(self._get_att(resource, attribute))
            return str(self._ref(name))

        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Any = _NoValue()
