"""The Runtime API (2018-06-01) and Extensions API (2020-01-01) as a sandbox answers them. Each request
runs in its own server thread (api.py) and blocks on the sandbox's condition variable until there is an
event for it (mixed into Sandbox)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from .base import ACCOUNT_ID
from .state import (
    ACCEPTED,
    DROP,
    MAX_PAYLOAD,
    Ext,
    Failure,
    Generation,
    Invocation,
    Resp,
    compact,
    error_body,
    forbidden,
)


class ApiHandlers:
    """Request handlers of the Runtime and Extensions APIs."""

    _cv: threading.Condition
    _gen: Optional[Generation]
    _state: str
    function_name: str
    function_version: str

    if TYPE_CHECKING:  # provided by Sandbox
        def _maybe_freeze_locked(self) -> None: ...
        def _rapid(self, message: str, level: str = "INFO") -> None: ...

    # --- Runtime API
    def rt_next(self) -> Resp:
        with self._cv:
            g = self._gen
            rt = g.runtime if g else None
            if rt is None:
                return DROP
            if rt.state == "running":
                return forbidden("InvalidStateTransition", "State transition from Running to Ready failed for "
                                  "runtime. Error: State transition is not allowed")
            rt.state = "ready"
            g.registration_open = False
            self._cv.notify_all()
            self._maybe_freeze_locked()
            while rt.pending is None:
                # during a shutdown the runtime's next just hangs (it is being SIGTERMed), as with the RIE
                if self._gen is not g or self._state == "closed":
                    return DROP
                self._cv.wait()
            inv, rt.pending = rt.pending, None
            rt.state = "running"
            inv.delivered = True
            headers = {
                "Lambda-Runtime-Aws-Request-Id": inv.id,
                "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": inv.arn,
            }
            if inv.trace_id:
                headers["Lambda-Runtime-Trace-Id"] = inv.trace_id
            if inv.client_context:
                headers["Lambda-Runtime-Client-Context"] = inv.client_context
            if inv.cognito_identity:
                headers["Lambda-Runtime-Cognito-Identity"] = inv.cognito_identity
            return Resp(200, inv.payload, headers, content_type=inv.content_type or "application/json")

    def _rt_invocation(self, req_id: str) -> tuple[Optional[Generation], Optional[Invocation], Optional[Resp]]:
        g = self._gen
        inv = g.invoke if g else None
        if inv is None or req_id != inv.id:
            return g, None, Resp(400, error_body("InvalidRequestID", "Invalid request ID"))
        if g.runtime is None or g.runtime.state != "running":
            name = {"responded": "RuntimeResponseSentState", "ready": "Ready"}.get(
                g.runtime.state if g.runtime else "", "Started")
            return g, inv, forbidden("InvalidStateTransition",
                                      f"State transition from {name} to InvocationResponse failed for runtime. "
                                      "Error: State transition is not allowed")
        return g, inv, None

    def rt_response(self, req_id: str, body: bytes, content_type: Optional[str]) -> Resp:
        with self._cv:
            g, inv, err = self._rt_invocation(req_id)
            if err:
                return err
            g.runtime.state = "responded"
            if len(body) > MAX_PAYLOAD:
                msg = (f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload size "
                       f"({MAX_PAYLOAD} bytes).")
                inv.response = (200, compact({"errorMessage": msg, "errorType": "Function.ResponseSizeTooLarge"}),
                                "application/json", "Function.ResponseSizeTooLarge")
                self._cv.notify_all()
                return Resp(413, error_body("RequestEntityTooLarge",
                                      f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."))
            inv.response = (200, body, content_type or "application/json", None)
            self._cv.notify_all()
            return ACCEPTED

    def rt_error(self, req_id: str, body: bytes, error_type: Optional[str], content_type: Optional[str]) -> Resp:
        with self._cv:
            g, inv, err = self._rt_invocation(req_id)
            if err:
                return err
            g.runtime.state = "responded"
            etype = _error_type(body, error_type or "Unhandled")
            inv.response = (200, body, content_type or "application/json", etype)
            self._cv.notify_all()
            return ACCEPTED

    def rt_init_error(self, body: bytes, error_type: Optional[str]) -> Resp:
        with self._cv:
            g = self._gen
            rt = g.runtime if g else None
            if rt is None or g.init_done or rt.state != "started":
                return forbidden("InvalidStateTransition", "State transition from Ready to InitError failed for "
                                  "runtime. Error: State transition is not allowed")
            rt.state = "init_error"
            etype = _error_type(body, error_type or "Runtime.Unknown")
            # the RIE answers the invoke with the runtime's error document (502)
            rt.init_error = Failure(502, body, etype)
            if g.failure is None:
                g.failure = rt.init_error
            self._cv.notify_all()
            return ACCEPTED

    # --- Extensions API
    def _ext_by_header(self, ident: Optional[str]) -> tuple[Optional[Generation], Optional[Ext], Optional[Resp]]:
        if not ident:
            return None, None, forbidden("Extension.MissingExtensionIdentifier",
                                          "Missing Lambda-Extension-Identifier header")
        try:
            key = str(uuid.UUID(ident))
        except ValueError:
            return None, None, forbidden("Extension.InvalidExtensionIdentifier", "Invalid Lambda-Extension-Identifier")
        g = self._gen
        e = g.by_id.get(key) if g else None
        if e is None:
            return g, None, forbidden("Extension.UnknownExtensionIdentifier", f"Unknown extension {key}")
        return g, e, None

    def ext_register(self, name: Optional[str], body: bytes, accept_feature: Optional[str]) -> Resp:
        if not name:
            return forbidden("Extension.InvalidExtensionName", "Empty extension name")
        try:
            req = json.loads(body or b"null")
            if not isinstance(req, dict):
                raise ValueError("request body must be a JSON object")
            if req.get("configurationKeys"):
                raise ValueError("configurationKeys are deprecated; use environment variables instead")
            events = req.get("events") or []
            if not isinstance(events, list) or not all(isinstance(x, str) for x in events):
                raise ValueError("events must be a list of strings")
        except ValueError as exc:
            return forbidden("InvalidRequestFormat", str(exc))
        with self._cv:
            g = self._gen
            if g is None or g.ending:
                return forbidden("Extension.RegistrationClosed", "Extension registration closed already")
            ext = g.exts.get(name)
            if ext is not None:
                for ev in events:
                    if ev not in ("INVOKE", "SHUTDOWN"):
                        return forbidden("Extension.InvalidEventType", f"{ev}: ErrorInvalidEventType")
                if ext.state != "launched":
                    state = {"init_error": "InitError", "exit_error": "ExitError"}.get(ext.state, "Registered")
                    return forbidden("Extension.InvalidExtensionState",
                                      f"State transition from {state} to Registered failed for extension {name}. "
                                      "Error: State transition is not allowed")
            else:
                # not a file name in /opt/extensions: an *internal* extension (INVOKE only)
                for ev in events:
                    if ev == "SHUTDOWN":
                        return forbidden("Extension.InvalidEventType",
                                          f"{ev}: ErrorEventNotSupportedForInternalAgent")
                    if ev != "INVOKE":
                        return forbidden("Extension.InvalidEventType", f"{ev}: ErrorInvalidEventType")
                if not g.registration_open:
                    return forbidden("Extension.RegistrationClosed", "Extension registration closed already")
                if name in g.internal:
                    return forbidden("Extension.InvalidExtensionState", "Extension with this name already registered")
                ext = Ext(name=name, path="", external=False)
                g.internal[name] = ext
            ext.id = str(uuid.uuid4())
            ext.events = set(events)
            ext.state = "registered"
            g.by_id[ext.id] = ext
            kind = "External" if ext.external else "Internal"
            self._rapid(f"{kind} agent {name} ({ext.id}) registered, subscribed to [{' '.join(events)}]")
            self._cv.notify_all()
            out: dict[str, Any] = {}
            if accept_feature and "accountId" in [f.strip() for f in accept_feature.split(",")]:
                out["accountId"] = ACCOUNT_ID
            out.update(functionName=self.function_name, functionVersion=self.function_version, handler="")
            return Resp(200, compact(out), {"Lambda-Extension-Identifier": ext.id})

    def ext_next(self, ident: Optional[str]) -> Resp:
        with self._cv:
            g, e, err = self._ext_by_header(ident)
            if err:
                return err
            if e.state in ("init_error", "exit_error", "exited"):
                state = {"init_error": "InitError", "exit_error": "ExitError", "exited": "Exited"}[e.state]
                return forbidden("Extension.InvalidExtensionState",
                                  f"State transition from {state} to Ready failed for extension {e.id}. "
                                  "Error: State transition is not allowed")
            e.state = "ready"
            e.invoke_pending = False
            self._cv.notify_all()
            self._maybe_freeze_locked()
            while not e.queue:
                if self._gen is not g or self._state == "closed":
                    return DROP
                self._cv.wait()
            ev = e.queue.popleft()
            e.state = "running"
            if ev.kind == "SHUTDOWN":
                e.shutdown_delivered_at = time.monotonic()
            return ev

    def _ext_error(self, ident: Optional[str], error_type: Optional[str], body: bytes, kind: str) -> Resp:
        with self._cv:
            g, e, err = self._ext_by_header(ident)
            if err:
                return err
            if not error_type:
                return forbidden("Extension.MissingHeader", "Lambda-Extension-Function-Error-Type not found")
            target = "InitError" if kind == "init" else "Exited"
            allowed = ("registered",) if kind == "init" else ("registered", "ready", "running")
            if e.state not in allowed or (kind == "init" and g.init_done):
                state = {"init_error": "InitError", "exit_error": "ExitError", "ready": "Ready",
                         "running": "Running", "registered": "Registered"}.get(e.state, e.state)
                return forbidden("Extension.InvalidExtensionState",
                                  f"State transition from {state} to {target} failed for extension {e.id}. "
                                  "Error: State transition is not allowed")
            e.state = "init_error" if kind == "init" else "exit_error"
            e.error_type = error_type
            # like the RIE, the INIT or invocation (which keeps waiting for it) fails once the extension
            # has exited (Sandbox._on_exit); the error type it reported is not passed on to the caller
            self._cv.notify_all()
            return ACCEPTED

    def ext_init_error(self, ident: Optional[str], error_type: Optional[str], body: bytes) -> Resp:
        return self._ext_error(ident, error_type, body, "init")

    def ext_exit_error(self, ident: Optional[str], error_type: Optional[str], body: bytes) -> Resp:
        return self._ext_error(ident, error_type, body, "exit")


def _error_type(body: bytes, default: str) -> str:
    """The errorType of a runtime's error document, else `default` (its header or the RIE's)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return default
    if isinstance(parsed, dict) and parsed.get("errorType"):
        return str(parsed["errorType"])
    return default
