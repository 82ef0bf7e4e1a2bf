"""What localfaas says about AWS itself: the account, the ARNs it hands out and Lambda's payload
limits, in one place so that every event, header and error message names the same figures."""

from __future__ import annotations

ACCOUNT_ID = "000000000000"  # LocalStack's and SAM's local account: no real account is ever named

# Lambda's limits (docs/lambda_behaviours.md §3, §4): a synchronous Invoke's request and a
# function URL's body are refused over 6 MB; the Runtime API takes a response 100 bytes larger,
# the figure Lambda's own messages quote (6291556).
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
MAX_RESPONSE_BYTES = MAX_PAYLOAD_BYTES + 100
MAX_ASYNC_PAYLOAD_BYTES = 1024 * 1024  # an Event invocation's request


def function_arn(region: str, name: str) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"


def layer_arn(region: str, name: str, version: int = 1) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:layer:{name}:{version}"


def event_source_mapping_arn(region: str, mapping_id: str) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:event-source-mapping:{mapping_id}"


def role_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT_ID}:user/{name}"


def rule_arn(region: str, rule_name: str) -> str:
    """An EventBridge rule, as a Schedule event's `resources` name it."""
    return f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule_name}"


def stack_id(region: str, stack_name: str) -> str:
    return f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/local"
