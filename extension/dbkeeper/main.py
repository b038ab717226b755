"""Entry point: configure, bind, register, then serve until SHUTDOWN. The only place that reads
the environment or decides the exit code.

Everything before `registered` is on Lambda's cold-start path, so it imports only what it needs
(no asyncio, no PyMySQL): those load after registration, overlapped with the function's own INIT.
"""

from __future__ import annotations

import os
import time

from .config import Config, fail_mode_of
from .errors import ConfigError, DbkeeperError, ExtensionsApiError, ListenError, StateFileError
from .events import ShutdownEvent
from .extensions_api import ExtensionsApi
from .log import Logger
from .state_file import remove_state, state_path, write_state

DEFAULT_NAME = "dbkeeper"


def main(argv: list[str]) -> int:
    """argv[0], when given, is the launcher's path: Lambda knows the extension by its file name."""
    started = time.monotonic()
    log = Logger()
    name = os.path.basename(argv[0]) if argv else DEFAULT_NAME
    runtime_api = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not runtime_api:
        log.error("not_in_lambda", error="AWS_LAMBDA_RUNTIME_API is not set: dbkeeper runs as a Lambda extension")
        return 1
    # The wrapper points the function at dbkeeper only while this file names a live dbkeeper. One
    # left by a predecessor (SIGKILLed at a deadline, crashed) goes before anything is decided.
    state = state_path(runtime_api)
    remove_state(state)
    try:
        return _run(started, log, name, runtime_api, state)
    finally:
        remove_state(state, pid=os.getpid())


def _run(started: float, log: Logger, name: str, runtime_api: str, state: str) -> int:
    try:
        api = ExtensionsApi(runtime_api)
        try:
            config = Config.from_environ(os.environ)
        except ConfigError as exc:
            if fail_mode_of(os.environ) == "closed":
                return _fail_init(api, name, log, "Extension.ConfigInvalid", exc)
            return _stay_idle(api, name, log, failed=("Extension.ConfigInvalid", exc))
        log.set_level(config.log_level)
        if not config.enabled:
            return _stay_idle(api, name, log)
        try:
            from .listeners import bind_listeners

            listeners = bind_listeners(config)
        except ListenError as exc:
            if config.fail_mode == "closed":
                return _fail_init(api, name, log, "Extension.ListenFailed", exc)
            return _stay_idle(api, name, log, failed=("Extension.ListenFailed", exc))
        try:
            write_state(state, config.listen_port, config.socket_path, os.getpid())
        except StateFileError as exc:
            listeners.close()
            if config.fail_mode == "closed":
                return _fail_init(api, name, log, "Extension.StateFileFailed", exc)
            return _stay_idle(api, name, log, failed=("Extension.StateFileFailed", exc))
        # Only now: Lambda starts the runtime (and the wrapper reads the file) once every
        # extension has registered.
        registration = api.register(name, ["SHUTDOWN"])
    except ExtensionsApiError as exc:
        log.error("extensions_api_failed", error=str(exc), status=exc.status, error_type=exc.error_type)
        return 1
    log.info("registered", extension=name, function=registration.function_name, state_file=state,
             ms=round((time.monotonic() - started) * 1000, 3))

    from .event_pump import EventPump

    events = EventPump(api)
    events.start()
    try:
        from .lifecycle import run

        return run(config, log, listeners, events)
    except ExtensionsApiError as exc:
        log.error("extensions_api_failed", error=str(exc), status=exc.status, error_type=exc.error_type)
        return 1
    except (DbkeeperError, OSError) as exc:
        log.error("fatal", error=str(exc))
        _report_exit(api, log, exc)
        return 1
    finally:
        listeners.close()


def _fail_init(api: ExtensionsApi, name: str, log: Logger, error_type: str, error: Exception) -> int:
    """Lambda only takes init/error from a registered extension: register, report, exit."""
    log.error("init_failed", error_type=error_type, error=str(error), fail_mode="closed")
    try:
        api.register(name, ["SHUTDOWN"])
        api.init_error(error_type, str(error))
    except ExtensionsApiError as exc:
        log.error("extensions_api_failed", error=str(exc), status=exc.status, error_type=exc.error_type)
    return 1


def _report_exit(api: ExtensionsApi, log: Logger, error: Exception) -> None:
    try:
        api.exit_error("Extension.Fatal", str(error))
    except ExtensionsApiError as exc:
        log.error("extensions_api_failed", error=str(exc))


def _stay_idle(api: ExtensionsApi, name: str, log: Logger, failed: tuple[str, Exception] | None = None) -> int:
    """A registered no-op that never touches the database: DBKEEPER_ENABLED=false, or a problem at
    INIT in fail-open mode. Nothing listens and no state file says otherwise, so the wrapper leaves
    the function's settings alone and the function connects directly, as without the layer."""
    if failed is not None:
        error_type, error = failed
        log.error("init_failed", error_type=error_type, error=str(error), fail_mode="open",
                  detail="dbkeeper serves nothing; the function connects to the database directly")
    api.register(name, ["SHUTDOWN"])
    log.info("registered", extension=name, enabled=False, serving=False)
    while True:
        event = api.next_event()
        if isinstance(event, ShutdownEvent):
            log.info("shutdown_complete", reason=event.reason, enabled=False)
            return 0
