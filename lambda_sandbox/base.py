"""What Sandbox and RieSandbox share: the function's settings, log access, the context-manager
protocol and the removal of a sandbox's network namespace and private /tmp."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any, Optional

from . import procs
from .logs import LogObservation, LogRecord, LogStore

ACCOUNT_ID = "012345678912"


class SandboxBase(LogObservation):
    _netns: Any
    private_tmp: Optional[str]

    def _set_function(self, opt_dir: str, task_dir: str, handler: str, env: Optional[dict[str, str]],
                      timeout_s: float, memory_mb: int, function_name: str, function_version: str, region: str,
                      python: Optional[str], runtime_cmd: Optional[list[str]], freeze: bool, netns: bool,
                      shutdown_budget_ms: int, on_log: Optional[Callable[[LogRecord], None]]) -> None:
        self.opt_dir = os.path.abspath(opt_dir)
        self.task_dir = os.path.abspath(task_dir)
        self.handler = handler
        self.env = dict(env or {})
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.function_name = function_name
        self.function_version = function_version
        self.region = region
        self.python = python or sys.executable
        self.runtime_cmd = runtime_cmd
        self.freeze = freeze
        self.use_netns = netns
        self.shutdown_budget_ms = shutdown_budget_ms
        self.logs_store = LogStore(on_log)
        self.arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _remove_netns_and_tmp(self) -> None:
        if self._netns is not None:
            if self._netns.inode is not None:
                procs.signal_pids(procs.pids_in_netns(self._netns.inode), signal.SIGKILL)
            self._netns.delete()
        if self.private_tmp is not None:
            shutil.rmtree(self.private_tmp, ignore_errors=True)
