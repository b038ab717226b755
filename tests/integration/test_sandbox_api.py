"""Spec: the sandbox's Extensions API and Runtime API answer exactly as Lambda and the RIE do
(docs/LAMBDA_SANDBOX.md)."""

import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from tests.sandbox_fixtures.helpers import ext_events, http, make_opt, sandboxes, wait_ext_event  # noqa: E402,F401

REG = "/2020-01-01/extension/register"
NEXT = "/2020-01-01/extension/event/next"


def test_register_answers_identifier_and_function_metadata(tmp_path, sandboxes):
    # given an extension registering under its file name
    sb = sandboxes(make_opt(tmp_path, {"testext": {"events": ["INVOKE", "SHUTDOWN"]}}))
    # when the sandbox initialises
    assert sb.invoke({}).ok
    # then register answered 200, an identifier header and the RIE's exact body
    reg = sb.wait_for_json("testext", lambda e: e["event"] == "register")
    assert reg["status"] == 200
    uuid.UUID(reg["headers"]["Lambda-Extension-Identifier"])
    assert reg["body"] == '{"functionName":"test_function","functionVersion":"$LATEST","handler":""}'


def test_register_with_accept_feature_account_id_adds_account_id(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"accept_feature": "accountId"}}))
    assert sb.invoke({}).ok
    reg = sb.wait_for_json("testext", lambda e: e["event"] == "register")
    assert json.loads(reg["body"]) == {"accountId": "012345678912", "functionName": "test_function",
                                       "functionVersion": "$LATEST", "handler": ""}


def test_invoke_event_is_json_with_event_identifier_and_no_tracing_without_trace_id(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), timeout_s=7)
    before = int(time.time() * 1000)
    r = sb.invoke({"k": 1})
    assert r.ok, r.body
    ev = wait_ext_event(sb, "testext", "INVOKE")
    assert len(ext_events(sb, "testext", "INVOKE")) == 1
    assert ev["content_type"] == "application/json"
    uuid.UUID(ev["headers"]["Lambda-Extension-Event-Identifier"])
    body = json.loads(ev["body"])
    assert list(body) == ["eventType", "deadlineMs", "requestId", "invokedFunctionArn"]
    assert body["requestId"] == r.request_id
    assert body["invokedFunctionArn"] == "arn:aws:lambda:us-east-1:012345678912:function:test_function"
    assert before + 7000 <= body["deadlineMs"] <= int(time.time() * 1000) + 7000


def test_invoke_event_carries_tracing_when_the_invoke_has_a_trace_id(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}))
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    r = sb.invoke({}, trace_id=trace)
    ev = wait_ext_event(sb, "testext", "INVOKE")
    assert json.loads(ev["body"])["tracing"] == {"type": "X-Amzn-Trace-Id", "value": trace}
    assert r.json()["trace"] == trace  # the runtime got Lambda-Runtime-Trace-Id too


def test_shutdown_event_is_text_plain_json_without_request_id(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"events": ["SHUTDOWN"]}}))
    assert sb.invoke({}).ok
    t_sig = int(time.time() * 1000)
    rep = sb.shutdown()
    ev = wait_ext_event(sb, "testext", "SHUTDOWN")
    assert len(ext_events(sb, "testext", "SHUTDOWN")) == 1
    assert ev["content_type"].startswith("text/plain")
    assert "Lambda-Extension-Event-Identifier" not in ev["headers"]
    body = json.loads(ev["body"])
    assert list(body) == ["eventType", "deadlineMs", "shutdownReason"]
    assert body["shutdownReason"] == "SandboxTerminated"
    assert body["deadlineMs"] == rep.deadline_ms
    assert t_sig + 2000 - 50 <= body["deadlineMs"] <= t_sig + 2000 + 50


def test_extensions_api_error_cases(tmp_path, sandboxes):
    # given an initialised sandbox with one registered extension
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), freeze=False)
    assert sb.invoke({}).ok
    a = sb.api_address
    body = b'{"events":["INVOKE"]}'

    def call(method, path, headers=None, data=b""):
        status, _, raw = http(a, method, path, headers, data)
        return status, json.loads(raw)

    # missing name
    assert call("POST", REG, {}, body) == (403, {"errorMessage": "Empty extension name",
                                                 "errorType": "Extension.InvalidExtensionName"})
    # registering twice
    st, err = call("POST", REG, {"Lambda-Extension-Name": "testext"}, body)
    assert (st, err["errorType"]) == (403, "Extension.InvalidExtensionState")
    # bad / missing / unknown identifiers
    assert call("GET", NEXT, {"Lambda-Extension-Identifier": "nope"}) == (
        403, {"errorMessage": "Invalid Lambda-Extension-Identifier",
              "errorType": "Extension.InvalidExtensionIdentifier"})
    assert call("GET", NEXT)[1]["errorType"] == "Extension.MissingExtensionIdentifier"
    assert call("GET", NEXT, {"Lambda-Extension-Identifier": str(uuid.uuid4())})[1]["errorType"] == \
        "Extension.UnknownExtensionIdentifier"
    # an unknown name is an internal extension: SHUTDOWN refused, and registration is closed after INIT
    st, err = call("POST", REG, {"Lambda-Extension-Name": "other"}, b'{"events":["SHUTDOWN"]}')
    assert (st, err["errorType"]) == (403, "Extension.InvalidEventType")
    st, err = call("POST", REG, {"Lambda-Extension-Name": "other"}, body)
    assert (st, err["errorType"]) == (403, "Extension.RegistrationClosed")
    # init/error without the error type header
    reg = sb.wait_for_json("testext", lambda e: e["event"] == "register")
    ident = reg["headers"]["Lambda-Extension-Identifier"]
    st, err = call("POST", "/2020-01-01/extension/init/error", {"Lambda-Extension-Identifier": ident}, b"{}")
    assert (st, err["errorType"]) == (403, "Extension.MissingHeader")
    # Telemetry/Logs APIs are not supported (like the RIE)
    assert call("PUT", "/2022-07-01/telemetry", {}, b"{}") == (
        202, {"errorMessage": "Telemetry API is not supported", "errorType": "Telemetry.NotSupported"})
    assert call("PUT", "/2020-08-15/logs", {}, b"{}")[1]["errorType"] == "Logs.NotSupported"
    # runtime API: unknown request id
    assert call("POST", f"/2018-06-01/runtime/invocation/{uuid.uuid4()}/response", {}, b"{}") == (
        400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"})
    # and the sandbox still works
    assert sb.invoke({}).ok


def test_registering_under_another_name_with_shutdown_is_refused(tmp_path, sandboxes):
    # given an extension whose Lambda-Extension-Name is not its file name, asking for SHUTDOWN
    sb = sandboxes(make_opt(tmp_path, {"testext": {"register_name": "other", "events": ["SHUTDOWN"]}}))
    r = sb.invoke({})
    reg = sb.wait_for_json("testext", lambda e: e["event"] == "register")
    assert reg["status"] == 403 and json.loads(reg["body"])["errorType"] == "Extension.InvalidEventType"
    # then it exits before registering (the fixture exits 2): 502 with an empty body
    assert (r.status, r.body, r.ok) == (502, b"", False)


def test_registering_under_another_name_makes_init_wait_for_the_file_name(tmp_path, sandboxes):
    # given an extension registering as an internal one (INVOKE only, other name)
    sb = sandboxes(make_opt(tmp_path, {"testext": {"register_name": "other", "events": ["INVOKE"]}}),
                   timeout_s=1)
    # when invoked, INIT waits for "testext" to register, which never happens: bounded by the timeout
    r = sb.invoke({})
    reg = sb.wait_for_json("testext", lambda e: e["event"] == "register")
    assert reg["status"] == 200
    assert r.timed_out and r.body == b"Task timed out after 1.00 seconds"
    assert not any(src == "runtime" for src, _ in sb.logs)  # the runtime never started
