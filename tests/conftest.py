"""Shared fixtures.

MariaDB (see tests/mariadb.py for the full API):
    mariadb          session-scoped server shared by the whole run. Don't kill, restart or
                     reconfigure it: use fresh_mariadb for that (or restore what you set_global).
    fresh_mariadb    function-scoped server of your own (kill/restart/set_global freely).
    mariadb_factory  function-scoped: mariadb_factory(bind_address="0.0.0.0", extra_args=[...])
                     starts more servers; all are removed after the test.
    free_port        free_port(host="127.0.0.1") -> int

Layer:
    built_layer      session-scoped: runs ./build.sh once; .zip_x86_64, .zip_arm64, .tree_x86_64
                     (use as /opt), .tree_arm64, .output (build.sh's stdout+stderr).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mariadb import MariaDB, MariaDBNotInstalled
from tests.mariadb import free_port as _free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
# Other projects' test files, run by our tests in their own way (see each one's SOURCE.md).
collect_ignore = ["third_party"]


def _start(**kwargs: Any) -> MariaDB:
    try:
        db = MariaDB(**kwargs)
    except MariaDBNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        return db.start()
    except BaseException:
        db.cleanup()
        raise


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    db = _start()
    try:
        yield db
    finally:
        db.stop()
        db.cleanup()


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[..., MariaDB]]:
    started: list[MariaDB] = []

    def factory(**kwargs: Any) -> MariaDB:
        db = _start(**kwargs)
        started.append(db)
        return db

    try:
        yield factory
    finally:
        for db in reversed(started):
            db.cleanup()  # SIGKILL + remove the directory: nothing of it is needed any more


@pytest.fixture
def fresh_mariadb(mariadb_factory: Callable[..., MariaDB]) -> MariaDB:
    return mariadb_factory()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[..., int]:
    return _free_port


@dataclass(frozen=True)
class BuiltLayer:
    zip_x86_64: Path
    zip_arm64: Path
    tree_x86_64: Path
    tree_arm64: Path
    output: str


@pytest.fixture(scope="session")
def built_layer() -> BuiltLayer:
    proc = subprocess.run(
        [str(REPO_ROOT / "build.sh")],
        cwd="/",  # build.sh must work from any directory
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"./build.sh failed ({proc.returncode}):\n{proc.stdout[-6000:]}", pytrace=False)
    dist = REPO_ROOT / "dist"
    return BuiltLayer(
        zip_x86_64=dist / "dbkeeper-layer-x86_64.zip",
        zip_arm64=dist / "dbkeeper-layer-arm64.zip",
        tree_x86_64=dist / "layer-x86_64",
        tree_arm64=dist / "layer-arm64",
        output=proc.stdout,
    )


@pytest.fixture(scope="session")
def moto_server():
    """moto in server mode on a free loopback port (Secrets Manager, DynamoDB, STS): tests/aws_endpoint.py."""
    from tests.aws_endpoint import MotoServer

    with MotoServer() as server:
        yield server
