"""Runs the built dbkeeper layer as a real extension process in the project's Lambda sandbox.

Integration tests connect to it from the test process, as a function would; the sandbox's
runtime is a no-op handler and freezing is off (tests are the "function").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lambda_sandbox import Sandbox

NOOP_TASK = Path(__file__).resolve().parent / "functions" / "noop"
EXTENSION = "dbkeeper"


def state_file_of(runtime_api: str) -> Path:
    """Where the extension tells the wrapper what it serves: the documented rule, spelled out
    independently of extension/dbkeeper/state_file.py so that a change to either shows."""
    return Path("/tmp/.dbkeeper-" + re.sub(r"[^A-Za-z0-9.]", "_", runtime_api) + ".state")


def extension_python() -> str:
    """A real interpreter path: the launcher runs it with -I -S, so no site-packages leak in."""
    return os.path.realpath(sys.executable)


@dataclass
class RunningDbkeeper:
    sandbox: Sandbox
    upstream: object  # tests.mariadb.MariaDB
    host: str
    port: int
    unix_socket: str
    workdir: str
    env: dict = field(default_factory=dict)

    def logs(self) -> list[dict]:
        """The extension's JSON log lines, parsed."""
        lines = []
        for source, line in self.sandbox.logs:
            if source == EXTENSION and line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines

    def events(self, name: str) -> list[dict]:
        return [line for line in self.logs() if line.get("event") == name]

    def wait_for_event(self, name: str, timeout: float = 5.0, **fields) -> dict:
        return self.sandbox.wait_for_json(
            EXTENSION, lambda line: line.get("event") == name and all(line.get(k) == v for k, v in fields.items()),
            timeout=timeout)

    @property
    def pid(self) -> int | None:
        return self.sandbox.pids().get(EXTENSION)

    def alive(self) -> bool:
        return self.pid is not None

    def connect_kwargs(self, **overrides) -> dict:
        kwargs = dict(host=self.host, port=self.port, user=self.upstream.user, password=self.upstream.password,
                      database=self.upstream.database)
        kwargs.update(overrides)
        return kwargs

    def stop(self):
        from lambda_sandbox.results import SandboxClosed

        try:
            report = self.sandbox.shutdown()
        except SandboxClosed:  # the test shut it down itself
            report = None
        self.sandbox.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return report


def start_dbkeeper(layer_tree: Path, upstream, port: int, extra_env: dict | None = None,
                   task_dir: Path = NOOP_TASK, freeze: bool = False,
                   before_init: Callable[[Sandbox], None] | None = None,
                   without: tuple[str, ...] = ()) -> RunningDbkeeper:
    """before_init(sandbox): runs once the sandbox has its Runtime API address, before any process starts.
    `without`: variables of upstream.db_env() to leave out (e.g. the password, when a secret has it)."""
    workdir = tempfile.mkdtemp(prefix="dbk-", dir="/tmp")  # short: Unix socket paths are limited to 107 bytes
    socket_path = os.path.join(workdir, "dbkeeper.sock")
    env = {**upstream.db_env(), "DBKEEPER_LISTEN_PORT": str(port), "DBKEEPER_SOCKET": socket_path,
           "DBKEEPER_PYTHON": extension_python(), "DBKEEPER_LOG_LEVEL": "debug"}
    env.update(extra_env or {})
    for name in without:
        env.pop(name, None)
    sandbox = Sandbox(str(layer_tree), str(task_dir), "app.handler", env=env, freeze=freeze, timeout_s=15)
    sandbox.start()
    try:
        if before_init is not None:
            before_init(sandbox)
        failure = sandbox.init()
    except BaseException:
        sandbox.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    running = RunningDbkeeper(sandbox, upstream, "127.0.0.1", port, socket_path, workdir, env)
    if failure is not None:
        running.stop()
        raise RuntimeError(f"dbkeeper INIT failed: {failure}")
    return running
