"""Lifecycle events as the docs and the RIE send them (docs/LAMBDA_SANDBOX.md)."""

import pytest

from dbkeeper.errors import ExtensionsApiError
from dbkeeper.events import InvokeEvent, ShutdownEvent, parse_event


def test_an_invoke_as_documented_becomes_an_invoke_event():
    body = (b'{"eventType":"INVOKE","deadlineMs":1795436238245,"requestId":"58e7","invokedFunctionArn":'
            b'"arn:aws:lambda:us-east-1:012345678912:function:test_function"}')
    arn = "arn:aws:lambda:us-east-1:012345678912:function:test_function"
    assert parse_event(body) == InvokeEvent("58e7", 1795436238245, arn)


def test_an_invoke_with_a_trace_id_carries_it():
    body = (b'{"eventType":"INVOKE","deadlineMs":1,"requestId":"r","invokedFunctionArn":"a",'
            b'"tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-abc"}}')
    assert parse_event(body).trace_id == "Root=1-abc"


@pytest.mark.parametrize("reason",
                         ["SandboxTerminated", "Timeout", "SPINDOWN", "TIMEOUT", "FAILURE", "spindown", "SomethingNew"])
def test_a_shutdown_with_any_reason_becomes_a_shutdown_event(reason):
    body = ('{"eventType":"SHUTDOWN","deadlineMs":1795435941275,"shutdownReason":"' + reason + '"}').encode()
    event = parse_event(body)
    assert event == ShutdownEvent(reason, 1795435941275)
    assert event.is_timeout == (reason.lower() == "timeout")


def test_a_shutdown_without_a_reason_is_still_a_shutdown():
    assert parse_event(b'{"eventType":"shutdown","deadlineMs":5}') == ShutdownEvent("unknown", 5)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"eventType":"INVOKE"}', b'{"eventType":"RESTORE","deadlineMs":1}'])
def test_a_malformed_event_is_an_api_error(body):
    with pytest.raises(ExtensionsApiError):
        parse_event(body)
