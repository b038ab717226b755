"""botocore for the extension's isolated interpreter (`python3 -I -S`: no site-packages).

Where it comes from, first found wins:
1. the layer's own lib/ (the `full` layer variant vendors botocore and its dependencies);
2. DBKEEPER_AWS_SDK_PATH;
3. the Lambda runtime's bundled SDK: Python 3.11 and later keep the runtime-included libraries in
   /var/lang/lib/python3.X/site-packages, Python 3.8-3.10 in /var/runtime (AWS Lambda developer
   guide, "Deploy Python Lambda functions with container images", dependency search path).

From 2 and 3 only the SDK's own top-level packages are importable (an allow-list finder on
sys.meta_path), never the directory as a whole: a container image may have pip-installed the
function's packages there, and none of them may shadow or join the extension's.

All calls are blocking (botocore is synchronous): callers run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import os
import sys
import threading
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DbkeeperError

if TYPE_CHECKING:
    from ..config import Config
    from ..log import Logger

T = TypeVar("T")

# botocore and what it imports (boto3 and s3transfer are not needed: clients come from botocore)
SDK_PACKAGES = frozenset(("botocore", "jmespath", "dateutil", "six", "urllib3"))


class AwsError(DbkeeperError):
    """An AWS call failed or the SDK could not be loaded."""

    def __init__(self, message: str, code: str | None = None):
        self.code = code
        super().__init__(message)


def runtime_sdk_dirs() -> list[str]:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return [f"/var/lang/lib/python{version}/site-packages", "/var/runtime"]


class _AllowListFinder:
    """Finds only the SDK's top-level packages, and only in `directory`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or name not in SDK_PACKAGES:
            return None  # submodules resolve through their package's __path__
        return importlib.machinery.PathFinder.find_spec(name, [self.directory])


def _has_botocore(directory: str) -> bool:
    return importlib.machinery.PathFinder.find_spec("botocore", [directory]) is not None


_lock = threading.Lock()
_source: str | None = None


def load(sdk_path: str | None) -> str:
    """Make `import botocore` work; return where it comes from. Idempotent, thread-safe."""
    global _source
    with _lock:
        if _source is not None:
            return _source
        if importlib.machinery.PathFinder.find_spec("botocore") is not None:
            _source = "layer"
        else:
            candidates = ([sdk_path] if sdk_path else []) + runtime_sdk_dirs()
            directory = next((d for d in candidates if os.path.isdir(d) and _has_botocore(d)), None)
            if directory is None:
                raise AwsError("botocore not found in the layer, DBKEEPER_AWS_SDK_PATH or the runtime "
                               f"({', '.join(candidates)}): use the dbkeeper-full layer")
            sys.meta_path.append(_AllowListFinder(directory))
            _source = directory
        import botocore  # noqa: F401  (fails here, with the reason, rather than at the first call)
        return _source


class Aws:
    """One botocore session and its clients, made at first use (never during a SnapStart INIT:
    credentials are not there yet, and a client made then would be restored with stale ones)."""

    # Per service: (connect timeout s, read timeout s, attempts). DynamoDB calls sit on a client's
    # path and the budget retries on its own schedule: one short attempt each.
    _TIMEOUTS = {"dynamodb": (1, 2, 1)}
    _DEFAULT_TIMEOUTS = (2, 3, 2)

    def __init__(self, config: Config, log: Logger) -> None:
        self._aws = config.aws
        self._log = log
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.source: str | None = None

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`function(*args)` on one of the SDK's own worker threads (not the event loop's default
        executor: a call the caller stopped waiting for must not hold up anything else)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dbkeeper-aws")
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def client(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is not None:
                return client
            if self._session is None:
                self.source = load(self._aws.sdk_path)
                import botocore.session

                self._session = botocore.session.get_session()
            from botocore.config import Config as BotoConfig

            # Bounded: these calls sit on a client's path (first connect, lease), never unbounded.
            connect, read, attempts = self._TIMEOUTS.get(service, self._DEFAULT_TIMEOUTS)
            client = self._session.create_client(
                service, region_name=self._aws.region,
                config=BotoConfig(connect_timeout=connect, read_timeout=read,
                                  retries={"max_attempts": attempts, "mode": "standard"}))
            self._clients[service] = client
            return client

    def call(self, service: str, operation: str, **params: Any) -> Any:
        """client.<operation>(**params); botocore's errors become AwsError with the AWS error code."""
        try:
            client = self.client(service)
            return getattr(client, operation)(**params)
        except AwsError:
            raise
        except Exception as exc:  # botocore.exceptions.* (ClientError, EndpointConnectionError, ...)
            code = None
            response = getattr(exc, "response", None)
            if isinstance(response, dict):
                code = response.get("Error", {}).get("Code")
            elif type(exc).__name__ in ("ReadTimeoutError", "ConnectTimeoutError"):
                code = "Timeout"  # slow, not refused: worth waiting out where the caller can
            raise AwsError(f"{service}.{operation} failed: {exc}", code) from exc


_shared: Aws | None = None


def shared(config: Config, log: Logger) -> Aws:
    """One Aws per process: the credentials and the budget share its session and clients."""
    global _shared
    if _shared is None:
        _shared = Aws(config, log)
    return _shared
