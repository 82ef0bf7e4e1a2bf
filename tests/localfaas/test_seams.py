"""The seams between localfaas's modules: a module that calls another through a Protocol it
declares (the Runtime API's RuntimeHandler, the Lambda API's FunctionHost) is given a class that
has every method of it, with the same parameters, async where the Protocol's is. Nothing runs."""

from __future__ import annotations

import inspect

import pytest

from localfaas.api import FunctionHost
from localfaas.environment import Environment
from localfaas.host import Host
from localfaas.runtime_api import RuntimeHandler


def protocol_members(protocol: type) -> dict[str, object]:
    return {name: member for name, member in vars(protocol).items()
            if not name.startswith("_") and (callable(member) or isinstance(member, property))}


@pytest.mark.parametrize(("protocol", "implementation"), [
    (RuntimeHandler, Environment),
    (FunctionHost, Host),
])
def test_the_implementation_has_what_the_protocol_declares(protocol: type, implementation: type) -> None:
    members = protocol_members(protocol)
    assert members, protocol
    for name, declared in members.items():
        provided = inspect.getattr_static(implementation, name, None)
        assert provided is not None, f"{implementation.__name__} has no {name}"
        if isinstance(declared, property):
            assert isinstance(provided, property), f"{implementation.__name__}.{name} is not a property"
            continue
        assert inspect.iscoroutinefunction(provided) == inspect.iscoroutinefunction(declared), name
        wanted = list(inspect.signature(declared).parameters)
        given = [p for p, spec in inspect.signature(provided).parameters.items()
                 if spec.default is inspect.Parameter.empty or p in wanted]
        assert given == wanted, f"{implementation.__name__}.{name}{given} is not {name}{wanted}"
