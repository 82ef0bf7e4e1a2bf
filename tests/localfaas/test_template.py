"""SAM template reading: tags, intrinsics, Globals, parameters and what gets reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfaas.cfn import TemplateError, load_yaml
from localfaas.settings import host_settings, parameter_key
from localfaas.template import load_template, merge_globals

TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: {Type: String, Default: dev}
  RabbitMqUrl: {Type: String, Default: "amqp://default"}
  NoDefault: {Type: String}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Globals:
  Function:
    Runtime: python3.12
    Timeout: 10
    Layers: [!Ref Deps]
    Environment: {Variables: {A: global, B: global}}
Resources:
  Deps:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: code/}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      Timeout: 20
      Environment:
        Variables:
          B: local
          STAGE_NAME: !If [IsProd, production, !Sub "stage-${Stage}"]
          JOINED: !Join ["-", [a, !Ref Stage, !Select [1, !Split [",", "x,y,z"]]]]
          URL: !GetAtt FnUrl.FunctionUrl
          ARN: !GetAtt Fn.Arn
          BROKER: !Ref RabbitMqUrl
          REQUIRED: !Ref NoDefault
      FunctionUrlConfig: {AuthType: NONE}
      Events:
        Results:
          Type: MQ
          Properties:
            Broker: arn:aws:mq:us-east-1:000000000000:broker:b:b-1
            Queues: [results]
            SourceAccessConfigurations:
              - {Type: BASIC_AUTH, URI: arn:aws:secretsmanager:us-east-1:000000000000:secret:s}
              - {Type: VIRTUAL_HOST, URI: /tasks}
            BatchSize: 10
        Tick:
          Type: Schedule
          Properties: {Schedule: rate(1 minute), Input: '{"x": 1}'}
  Prod:
    Type: AWS::Serverless::Function
    Condition: IsProd
    Properties: {CodeUri: code/, Handler: app.handler}
Outputs:
  Url: {Value: !GetAtt FnUrl.FunctionUrl}
"""


@pytest.fixture
def template_path(tmp_path: Path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "app.py").write_text("def handler(e, c):\n    return e\n")
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return path


def load(path: Path, settings: dict[str, str] | None = None, overrides: dict[str, str] | None = None):
    return load_template(path, settings or {}, {"NoDefault": "given", **(overrides or {})},
                         lambda logical_id: f"http://127.0.0.1:9999/{logical_id}/")


def test_short_tags_become_long_form() -> None:
    document = load_yaml("A: !Ref X\nB: !GetAtt R.Attr\nC: !Sub 'x-${Y}'\nD: !Join [',', [a, b]]\n")
    assert document == {"A": {"Ref": "X"}, "B": {"Fn::GetAtt": ["R", "Attr"]},
                        "C": {"Fn::Sub": "x-${Y}"}, "D": {"Fn::Join": [",", ["a", "b"]]}}


def test_function_properties_globals_and_intrinsics(template_path: Path) -> None:
    template = load(template_path)
    fn = template.functions["Fn"]
    assert fn.timeout == 20 and fn.runtime == "python3.12" and fn.memory_mb == 128
    assert fn.code_dir == template_path.parent / "code"
    assert fn.layer_dirs == (template_path.parent / "code",)
    assert fn.environment == {
        "A": "global", "B": "local", "STAGE_NAME": "stage-dev", "JOINED": "a-dev-y",
        "URL": "http://127.0.0.1:9999/Fn/", "ARN": "arn:aws:lambda:us-east-1:000000000000:function:Fn",
        "BROKER": "amqp://default", "REQUIRED": "given",
    }
    assert fn.url is not None and fn.url.auth_type == "NONE"
    assert template.outputs == {"Url": "http://127.0.0.1:9999/Fn/"}
    assert "Prod" not in template.functions  # its Condition is false


def test_events(template_path: Path) -> None:
    fn = load(template_path).functions["Fn"]
    (mq,) = fn.mq_events
    assert (mq.queue, mq.virtual_host, mq.batch_size, mq.window_seconds) == ("results", "/tasks", 10, 0.5)
    assert mq.broker_arn.endswith("broker:b:b-1")
    (tick,) = fn.schedule_events
    assert tick.expression == "rate(1 minute)" and tick.input == {"x": 1}


def test_parameters_from_settings_then_overrides(template_path: Path) -> None:
    template = load(template_path, settings={"RABBITMQ_URL": "amqp://from-env", "STAGE": "prod"},
                    overrides={"Stage": "test"})
    assert template.parameters["RabbitMqUrl"] == "amqp://from-env"
    assert template.parameters["Stage"] == "test"
    assert "Prod" not in template.functions


def test_condition_includes_resource(template_path: Path) -> None:
    assert "Prod" in load(template_path, overrides={"Stage": "prod"}).functions


def test_missing_and_unknown_parameters_are_errors(template_path: Path) -> None:
    with pytest.raises(TemplateError, match="NoDefault"):
        load_template(template_path, {}, {}, lambda _: "")
    with pytest.raises(TemplateError, match="unknown parameter 'Nope'"):
        load(template_path, overrides={"Nope": "1"})


def test_unsupported_intrinsic_is_named(template_path: Path) -> None:
    template_path.write_text(TEMPLATE.replace("!Ref NoDefault", "!ImportValue Shared"))
    with pytest.raises(TemplateError, match="Fn::ImportValue"):
        load(template_path)


def test_globals_merge_rules() -> None:
    assert merge_globals({"a": 1, "m": {"x": 1}}, {"m": {"y": 2}}) == {"a": 1, "m": {"x": 1, "y": 2}}
    assert merge_globals([1, 2], [3]) == [1, 2, 3]
    assert merge_globals(10, 30) == 30
    assert merge_globals({"Ref": "A"}, {"Ref": "B"}) == {"Ref": "B"}


def test_parameter_key_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parameter_key("RABBITMQ_URL") == parameter_key("RabbitMqUrl") == "rabbitmqurl"
    for key in ("RABBITMQ_URL", "AWS_REGION", "A", "B", "C", "D", "E"):
        monkeypatch.delenv(key, raising=False)
    env = tmp_path / "local.env"
    env.write_text("# comment\nA=1\nexport B='two'\n\nC=x=y\nD=pa$$word${A}\nE\n")
    assert host_settings(env) == {"A": "1", "B": "two", "C": "x=y", "D": "pa$$word${A}"}
    monkeypatch.setenv("A", "from the environment")
    assert host_settings(env)["A"] == "from the environment"
    assert host_settings(tmp_path / "missing.env") == {}
