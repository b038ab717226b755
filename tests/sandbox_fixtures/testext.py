#!/usr/bin/env python3
"""Configurable external extension for the lambda_sandbox tests (stdlib only).

Installed by the tests as <opt>/extensions/<name>; its configuration is <opt>/testext-config/<name>.json
(so several copies with different behaviour can share one function environment). Every action is logged
as one JSON line on stdout: {"event": "...", ...}.

config keys (all optional):
  events                list, default ["INVOKE", "SHUTDOWN"]
  register_name         Lambda-Extension-Name to send (default: own file name; null: omit the header)
  accept_feature        value for Lambda-Extension-Accept-Feature
  crash_before_register exit code: exit before registering
  register_delay_ms     sleep before registering
  init_error            error type: POST /extension/init/error after registering, then exit 0
  exit_error            error type: POST /extension/exit/error when the first INVOKE arrives, then exit 0
  first_next_delay_ms   sleep before the first event/next
  invoke_delay_ms       sleep after an INVOKE before calling next again
  crash_on_invoke       exit code: exit when an INVOKE arrives
  crash_after_invoke_ms exit (code 5) this long after an INVOKE arrived, before calling next
  idle_crash_ms         after each INVOKE, a thread exits the process (code 7) this long after next was called
  ignore_shutdown       on SHUTDOWN, log and then block forever (never exits by itself)
  shutdown_delay_ms     on SHUTDOWN, wait this long before exiting
  exit_code             exit code after SHUTDOWN (default 0)
  tick_ms               a thread logs {"event":"tick"} every tick_ms
  burn_on_invoke_ms     on each INVOKE, spin on the CPU for this much CPU time before calling next; logs
                        {"event":"burned","cpu_s","wall_s"}
  connect               "host:port": open a TCP connection after registering and keep it open
  spawn_child           start a child process (sleep) in the same process group and log its pid
  write_file            path: after registering, write AWS_LAMBDA_RUNTIME_API into it (private /tmp tests)
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

NAME = os.path.basename(sys.argv[0])
CFG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))), "testext-config",
                        NAME + ".json")
try:
    with open(CFG_PATH) as f:
        CFG = json.load(f)
except FileNotFoundError:
    CFG = {}
API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = f"http://{API}/2020-01-01/extension"
_print_lock = threading.Lock()
KEEP = []


def log(event, **kw):
    with _print_lock:
        sys.stdout.write(json.dumps({"ts": time.time(), "level": "info", "event": event, "ext": NAME, **kw}) + "\n")
        sys.stdout.flush()


def call(method, path, headers=None, body=None):
    req = urllib.request.Request(BASE + path, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:  # no timeout: event/next blocks until the next event
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def burn(cpu_ms):
    """Spin until this process has used cpu_ms of CPU; (cpu seconds, wall seconds) it took."""
    c0, w0 = time.process_time(), time.monotonic()
    while time.process_time() - c0 < cpu_ms / 1000:
        pass
    return time.process_time() - c0, time.monotonic() - w0


def main():
    log("started", pid=os.getpid(), pgid=os.getpgid(0), cwd=os.getcwd(), argv0=sys.argv[0], env=dict(os.environ))
    if "crash_before_register" in CFG:
        log("crashing_before_register")
        sys.exit(CFG["crash_before_register"])
    if CFG.get("tick_ms"):
        def tick():
            n = 0
            while True:
                n += 1
                log("tick", n=n)
                time.sleep(CFG["tick_ms"] / 1000)
        threading.Thread(target=tick, daemon=True).start()
    if CFG.get("register_delay_ms"):
        time.sleep(CFG["register_delay_ms"] / 1000)
    headers = {"Content-Type": "application/json"}
    reg_name = CFG.get("register_name", NAME)
    if reg_name is not None:
        headers["Lambda-Extension-Name"] = reg_name
    if CFG.get("accept_feature"):
        headers["Lambda-Extension-Accept-Feature"] = CFG["accept_feature"]
    events = CFG.get("events", ["INVOKE", "SHUTDOWN"])
    status, rh, body = call("POST", "/register", headers, json.dumps({"events": events}).encode())
    log("register", status=status, headers=rh, body=body)
    if status != 200:
        sys.exit(2)
    ident = rh["Lambda-Extension-Identifier"]
    if CFG.get("connect"):
        host, port = CFG["connect"].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.settimeout(None)
        KEEP.append(s)
        log("connected", local=s.getsockname(), peer=s.getpeername())
    if CFG.get("write_file"):
        with open(CFG["write_file"], "w") as f:
            f.write(API)
        log("wrote", path=CFG["write_file"])
    if CFG.get("spawn_child"):
        child = subprocess.Popen(["sleep", "300"])
        KEEP.append(child)
        log("child", pid=child.pid)
    if CFG.get("init_error"):
        et = CFG["init_error"]
        st, h, b = call("POST", "/init/error", {"Lambda-Extension-Identifier": ident,
                                                "Lambda-Extension-Function-Error-Type": et},
                        json.dumps({"errorMessage": "bad config", "errorType": et, "stackTrace": []}).encode())
        log("init_error", status=st, body=b)
        st, h, b = call("GET", "/event/next", {"Lambda-Extension-Identifier": ident})
        log("next_after_init_error", status=st, body=b)
        sys.exit(0)
    if CFG.get("first_next_delay_ms"):
        time.sleep(CFG["first_next_delay_ms"] / 1000)
    invokes = 0
    while True:
        log("next_call")
        status, rh, body = call("GET", "/event/next", {"Lambda-Extension-Identifier": ident})
        try:
            ev = json.loads(body)
        except ValueError:
            ev = None
        log("event", status=status, content_type=rh.get("Content-Type"), headers=rh, body=body,
            eventType=(ev or {}).get("eventType"))
        if status != 200 or ev is None:
            sys.exit(3)
        if ev["eventType"] == "INVOKE":
            invokes += 1
            if CFG.get("exit_error"):
                et = CFG["exit_error"]
                st, h, b = call("POST", "/exit/error", {"Lambda-Extension-Identifier": ident,
                                                        "Lambda-Extension-Function-Error-Type": et},
                                json.dumps({"errorMessage": "fatal", "errorType": et, "stackTrace": []}).encode())
                log("exit_error", status=st, body=b)
                sys.exit(0)
            if "crash_on_invoke" in CFG:
                log("crashing_on_invoke")
                os._exit(CFG["crash_on_invoke"])
            if CFG.get("crash_after_invoke_ms"):
                time.sleep(CFG["crash_after_invoke_ms"] / 1000)
                log("crashing_after_invoke")
                os._exit(5)
            if CFG.get("invoke_delay_ms"):
                time.sleep(CFG["invoke_delay_ms"] / 1000)
            if CFG.get("burn_on_invoke_ms"):
                cpu_s, wall_s = burn(CFG["burn_on_invoke_ms"])
                log("burned", cpu_s=cpu_s, wall_s=wall_s)
            if CFG.get("idle_crash_ms"):
                def crash():
                    time.sleep(CFG["idle_crash_ms"] / 1000)
                    log("idle_crash")
                    os._exit(7)
                threading.Thread(target=crash, daemon=True).start()
            log("invoke_done", requestId=ev.get("requestId"))
        elif ev["eventType"] == "SHUTDOWN":
            if CFG.get("ignore_shutdown"):
                log("ignoring_shutdown")
                while True:
                    time.sleep(3600)
            if CFG.get("shutdown_delay_ms"):
                time.sleep(CFG["shutdown_delay_ms"] / 1000)
            log("exiting", code=CFG.get("exit_code", 0))
            sys.stdout.flush()
            os._exit(CFG.get("exit_code", 0))


if __name__ == "__main__":
    main()
