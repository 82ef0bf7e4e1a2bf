"""An execution environment's state changes only through its guarded transition (no process is
started here: the moves are pure logic; tests/localfaas/test_environments.py runs the real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfaas.environment import Environment, InvalidTransition, State
from localfaas.logs import LogSink
from localfaas.template import FunctionSpec


@pytest.fixture
def environment(tmp_path: Path) -> Environment:
    spec = FunctionSpec(logical_id="Echo", name="Echo", code_dir=tmp_path, handler="app.handler",
                        runtime="python3.12", timeout=3.0, memory_mb=128, environment={})
    return Environment(spec, 1, {}, LogSink(tmp_path / "logs"), lambda _environment: None)


def test_a_life_cold_start_warm_reuse_then_death(environment: Environment) -> None:
    assert environment.state is State.INIT
    for state in (State.BUSY, State.IDLE, State.BUSY, State.IDLE, State.DEAD):
        assert environment.transition(state) is True
        assert environment.state is state


def test_the_runtime_may_ask_for_work_before_the_first_invocation(environment: Environment) -> None:
    assert environment.transition(State.IDLE) is True
    assert environment.state is State.IDLE


def test_only_the_first_end_changes_the_state(environment: Environment) -> None:
    environment.transition(State.BUSY)
    assert environment.transition(State.DEAD) is True  # stopped, say
    assert environment.transition(State.DEAD) is False  # then its process exits
    assert environment.state is State.DEAD


@pytest.mark.parametrize(("path", "refused"), [
    ((State.DEAD,), State.IDLE),  # a dead environment is never reused
    ((State.DEAD,), State.BUSY),
    ((State.IDLE,), State.INIT),  # init happens once
    ((State.BUSY,), State.BUSY),  # an environment runs one invocation at a time
    ((State.BUSY,), State.INIT),
])
def test_a_move_the_table_does_not_allow_raises_and_changes_nothing(
        environment: Environment, path: tuple[State, ...], refused: State) -> None:
    for state in path:
        environment.transition(state)
    before = environment.state
    with pytest.raises(InvalidTransition, match=f"{before} -> {refused}"):
        environment.transition(refused)
    assert environment.state is before


def test_the_state_cannot_be_assigned(environment: Environment) -> None:
    with pytest.raises(AttributeError):
        environment.state = State.BUSY  # type: ignore[misc]
