"""What a sandbox's processes are started with: their environment (the function's, minus what Lambda keeps
from extensions), the runtime's command line, the extensions found in /opt/extensions, and the wrappers
that put a process into the sandbox's network namespace and Lambda's paths."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .netns import Netns

LAMBDA_PATHS_SCRIPT = (  # /opt and /var/task read-only as on Lambda; only /tmp is writable
    'mount --bind "$1" /opt && mount -o remount,bind,ro /opt && '
    'mount --bind "$2" /var/task && mount -o remount,bind,ro /var/task && '
    # the private /tmp hides the host's; paths under it the processes still need (an interpreter's
    # virtualenv in a checkout under /tmp) are bound back from the host's /tmp, seen at /mnt meanwhile
    'mount --bind /tmp /mnt && mount --bind "$3" /tmp && shift 3 && '
    'while [ "$1" != "--" ]; do mkdir -p "$1" && mount --bind "/mnt${1#/tmp}" "$1" || exit 1; shift; done && '
    'shift && umount -l /mnt && cd /var/task && exec "$@"'
)
EXT_EXCLUDED_ENV = {"_HANDLER", "PYTHONPATH", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
                    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_XRAY_CONTEXT_MISSING"}
_py_version_cache: dict[str, str] = {}


def host_paths_under_tmp(python: str, *more: str) -> list[str]:
    """Host paths under /tmp that a sandbox's processes need although their /tmp is private: this
    checkout, the virtualenv of the interpreter that runs the runtime (e.g. a clone in /tmp) and `more`
    (e.g. the directory of an aws-lambda-rie binary)."""
    venv = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    candidates = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    if os.path.exists(os.path.join(venv, "pyvenv.cfg")):
        candidates.append(venv)
    candidates += [os.path.abspath(p) for p in more]
    keep: list[str] = []
    for path in sorted(candidates, key=len):
        if path.startswith("/tmp/") and not any(path == k or path.startswith(k + "/") for k in keep):
            keep.append(path)
    return keep


def scan_extensions(opt_dir: str) -> tuple[list[tuple[str, str]], Optional[str]]:
    """(name, path) of every executable file directly in <opt>/extensions, or the first non-executable
    one (INIT then fails with Extension.LaunchError); subdirectories are ignored."""
    ext_dir = os.path.join(opt_dir, "extensions")
    found: list[tuple[str, str]] = []
    if not os.path.isdir(ext_dir):
        return found, None
    for name in sorted(os.listdir(ext_dir)):
        path = os.path.join(ext_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if not os.access(path, os.X_OK):
            return found, f"Extension {name} is not executable: {path}"
        found.append((name, path))
    return found, None


class ProcessSetup:
    """Environment and command lines of a Sandbox's processes (mixed into Sandbox)."""

    python: str
    handler: str
    env: dict[str, str]
    function_name: str
    function_version: str
    memory_mb: int
    region: str
    runtime_cmd: Optional[list[str]]
    opt_dir: str
    task_dir: str
    proc_opt: str
    proc_task: str
    lambda_paths: bool
    private_tmp: Optional[str]
    api_address: str
    initialization_type: str
    _netns: Optional[Netns]

    def _py_version(self) -> str:
        if self.python == sys.executable:
            return f"{sys.version_info.major}.{sys.version_info.minor}"
        if self.python not in _py_version_cache:
            try:
                out = subprocess.run([self.python, "-c", "import sys;print('%d.%d' % sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            _py_version_cache[self.python] = out
        return _py_version_cache[self.python]

    def _env_layers(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        customer = {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
            "LANG": "en_US.UTF-8",
            "AWS_LAMBDA_INITIALIZATION_TYPE": self.initialization_type,
        }
        customer.update(self.env)
        customer.pop("AWS_LAMBDA_MAX_CONCURRENCY", None)  # would put awslambdaric in Managed Instances mode
        credentials = {
            "AWS_ACCESS_KEY_ID": self.env.get("AWS_ACCESS_KEY_ID", "ASIALAMBDASANDBOXKEY"),
            "AWS_SECRET_ACCESS_KEY": self.env.get("AWS_SECRET_ACCESS_KEY", "lambda-sandbox-dummy-secret"),
            "AWS_SESSION_TOKEN": self.env.get("AWS_SESSION_TOKEN", "lambda-sandbox-dummy-session-token"),
        }
        ver = self._py_version()
        runtime = {
            "_HANDLER": self.handler,
            "LAMBDA_TASK_ROOT": self.proc_task,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST",
        }
        if ver:
            runtime["AWS_EXECUTION_ENV"] = f"AWS_Lambda_python{ver}"
        platform = {
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": self.function_version,
            "AWS_LAMBDA_RUNTIME_API": self.api_address,
            "TZ": ":UTC",
        }
        return customer, credentials, runtime, platform

    def extension_env(self) -> dict[str, str]:
        customer, credentials, _runtime, platform = self._env_layers()
        env = {**customer, **credentials, **platform}
        return {k: v for k, v in env.items() if k not in EXT_EXCLUDED_ENV and not k.startswith("_")}

    def runtime_env(self) -> dict[str, str]:
        customer, credentials, runtime, platform = self._env_layers()
        env = {**customer, **credentials, **runtime, **platform}
        path = [self.proc_task]
        ver = self._py_version()
        opt_python = os.path.join(self.opt_dir, "python")
        if ver and os.path.isdir(os.path.join(opt_python, "lib", f"python{ver}", "site-packages")):
            path.append(os.path.join(self.proc_opt, "python", "lib", f"python{ver}", "site-packages"))
        if os.path.isdir(opt_python):
            path.append(os.path.join(self.proc_opt, "python"))
        if self.env.get("PYTHONPATH"):
            path.append(self.env["PYTHONPATH"])
        env["PYTHONPATH"] = ":".join(path)
        return env

    def runtime_argv(self) -> list[str]:
        cmd = list(self.runtime_cmd) if self.runtime_cmd else [self.python, "-m", "awslambdaric", self.handler]
        wrapper = self.env.get("AWS_LAMBDA_EXEC_WRAPPER")
        if wrapper:
            cmd = [self._map_opt(wrapper)] + cmd
        return self._in_ns(cmd)

    def extension_argv(self, name: str) -> list[str]:
        return self._in_ns([os.path.join(self.proc_opt, "extensions", name)])

    def _map_opt(self, path: str) -> str:
        """/opt/x -> <opt_dir>/x when the sandbox's opt_dir is not /opt (the function sees /opt paths)."""
        if path.startswith("/opt/") and self.proc_opt != "/opt" and not os.path.exists(path):
            return os.path.join(self.opt_dir, path[len("/opt/"):])
        return path

    def _in_ns(self, argv: list[str]) -> list[str]:
        if self.lambda_paths:
            # own mount namespace: opt_dir on /opt, task_dir on /var/task, the sandbox's private dir on /tmp
            # (bound last: opt_dir/task_dir may themselves live under /tmp); exec keeps the pid
            assert self.private_tmp is not None
            argv = ["unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c", LAMBDA_PATHS_SCRIPT,
                    "lsb", self.opt_dir, self.task_dir, self.private_tmp, *host_paths_under_tmp(self.python),
                    "--"] + argv
        if self._netns is not None:
            argv = self._netns.exec_prefix() + argv
        return argv
