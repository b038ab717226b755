"""The Extensions API client against a local HTTP server that answers as Lambda does."""

import json

import pytest

from dbkeeper.errors import ExtensionsApiError
from dbkeeper.events import InvokeEvent, ShutdownEvent
from dbkeeper.extensions_api import ExtensionsApi, parse_response
from tests.fake_lambda_api import FakeLambda


@pytest.fixture
def fake():
    server = FakeLambda()
    yield server
    server.close()


def registered(fake):
    fake.answer("POST", "/register", 200, b'{"functionName":"test_function","functionVersion":"$LATEST","handler":""}',
                {"Lambda-Extension-Identifier": "ext-id-1"})
    api = ExtensionsApi(fake.address)
    registration = api.register("dbkeeper", ["SHUTDOWN"])
    return api, registration


def test_register_sends_the_name_and_events_and_keeps_the_identifier(fake):
    api, registration = registered(fake)
    method, path, headers, body = fake.requests[0]
    assert (method, path) == ("POST", "/2020-01-01/extension/register")
    assert headers["Lambda-Extension-Name"] == "dbkeeper"
    assert json.loads(body) == {"events": ["SHUTDOWN"]}
    assert registration.extension_id == "ext-id-1" == api.extension_id
    assert registration.function_name == "test_function"


def test_a_refused_registration_raises_with_the_error_type(fake):
    fake.answer("POST", "/register", 403, b'{"errorMessage":"twice","errorType":"Extension.InvalidExtensionState"}')
    with pytest.raises(ExtensionsApiError) as caught:
        ExtensionsApi(fake.address).register("dbkeeper", ["SHUTDOWN"])
    assert caught.value.status == 403 and caught.value.error_type == "Extension.InvalidExtensionState"


def test_next_event_sends_the_identifier_and_parses_a_text_plain_shutdown(fake):
    api, _ = registered(fake)
    fake.answer("GET", "/event/next", 200,
                b'{"eventType":"SHUTDOWN","deadlineMs":42,"shutdownReason":"SandboxTerminated"}',
                content_type="text/plain")
    assert api.next_event() == ShutdownEvent("SandboxTerminated", 42)
    assert fake.requests[-1][2]["Lambda-Extension-Identifier"] == "ext-id-1"


def test_next_event_parses_an_invoke(fake):
    api, _ = registered(fake)
    fake.answer("GET", "/event/next", 200,
                b'{"eventType":"INVOKE","deadlineMs":7,"requestId":"r1","invokedFunctionArn":"arn"}',
                {"Lambda-Extension-Event-Identifier": "e1"})
    assert api.next_event() == InvokeEvent("r1", 7, "arn")


def test_a_bad_identifier_on_next_raises(fake):
    api, _ = registered(fake)
    fake.answer("GET", "/event/next", 403, b'{"errorMessage":"bad","errorType":"Extension.InvalidExtensionIdentifier"}')
    with pytest.raises(ExtensionsApiError) as caught:
        api.next_event()
    assert caught.value.error_type == "Extension.InvalidExtensionIdentifier"


@pytest.mark.parametrize("method_name, path", [("init_error", "/init/error"), ("exit_error", "/exit/error")])
def test_errors_are_reported_with_the_error_type_header_and_body(fake, method_name, path):
    api, _ = registered(fake)
    fake.answer("POST", path, 202, b'{"status":"OK"}')
    getattr(api, method_name)("Extension.ConfigInvalid", "DBKEEPER_DB_PORT='x': expected a whole number")
    method, _, headers, body = fake.requests[-1]
    assert headers["Lambda-Extension-Identifier"] == "ext-id-1"
    assert headers["Lambda-Extension-Function-Error-Type"] == "Extension.ConfigInvalid"
    assert json.loads(body) == {"errorMessage": "DBKEEPER_DB_PORT='x': expected a whole number",
                                "errorType": "Extension.ConfigInvalid", "stackTrace": []}


def test_an_unreachable_api_is_an_api_error():
    with pytest.raises(ExtensionsApiError):
        ExtensionsApi("127.0.0.1:1").register("dbkeeper", ["SHUTDOWN"])


def test_a_malformed_address_is_an_api_error():
    with pytest.raises(ExtensionsApiError):
        ExtensionsApi("no-port-here")


def test_chunked_and_read_to_close_bodies_are_understood():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    assert parse_response(chunked).body == b"abcdefg"
    assert parse_response(b"HTTP/1.0 202 Accepted\r\nX: y\r\n\r\nrest").body == b"rest"
    with pytest.raises(ExtensionsApiError):
        parse_response(b"garbage")
