"""Where an upstream connect gets its host, user and password, and how a local client's password
is checked: from the settings (the default, no I/O) or from AWS (dbkeeper.aws, imported only when
a setting asks for it).

Two small interfaces the pool and the client side call:
    Credentials.get() -> Target       before every upstream connect (may fetch, e.g. a secret)
    Credentials.invalidate(target)    the server answered 1045 with it: True when another try is worth it
    LocalAuth.verify(user, scramble, proof)   a local client's login
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from .config import Config

if TYPE_CHECKING:
    from .log import Logger
from .protocol.auth import native_password_hash, verify_native


class Target(NamedTuple):
    """One upstream login: where and as whom. Its repr hides the password."""

    host: str
    port: int
    user: str
    password: str
    database: str | None
    source: str = "settings"  # for logs: settings, secret:AWSCURRENT, iam, ...

    def __repr__(self) -> str:
        return f"Target({self.user}@{self.host}:{self.port}/{self.database or ''}, source={self.source})"


class Credentials:
    """The settings' credentials: fixed, nothing to fetch, nothing to retry."""

    def __init__(self, config: Config):
        self._target = Target(config.db_host, config.db_port, config.db_user, config.db_password, config.db_name)

    async def get(self) -> Target:
        return self._target

    def invalidate(self, failed: Target) -> bool:
        return False

    def close(self) -> None:
        pass


class LocalAuth:
    """Checks a local client's user and mysql_native_password proof against the hashes of the
    passwords it may present (computed once, not per handshake)."""

    def __init__(self, user: str, passwords: list[str]):
        self._user = user
        self._hashes = [native_password_hash(password) for password in passwords]

    async def verify(self, user: str, scramble: bytes, proof: bytes, trusted: bool = False) -> bool:
        """`trusted`: a client on the 0600 Unix socket with DBKEEPER_TRUST_UNIX_SOCKET (user only)."""
        return user == self._user and (trusted or any(verify_native(h, scramble, proof) for h in self._hashes))


class SandboxIdentity:
    """What dbkeeper tells the server about itself in every upstream connect's attributes
    (performance_schema.session_connect_attrs), so a session can be traced to its function and
    sandbox, and one whose sandbox vanished can be found and killed (budget reaping).

    The sandbox id is drawn at first use, never at import or INIT: a SnapStart snapshot would hand
    one drawn during INIT to every environment restored from it."""

    def __init__(self, function_name: str, function_version: str):
        self.function_name = function_name
        self.function_version = function_version
        self._sandbox_id: str | None = None

    @property
    def sandbox_id(self) -> str:
        if self._sandbox_id is None:
            self._sandbox_id = os.urandom(8).hex()
        return self._sandbox_id

    def attributes(self, lease: str | None = None) -> dict[str, str]:
        attributes = {"program_name": "dbkeeper", "dbkeeper_sandbox": self.sandbox_id}
        if self.function_name:
            attributes["dbkeeper_function"] = self.function_name[:64]
            attributes["dbkeeper_version"] = self.function_version[:32]
        if lease:
            attributes["dbkeeper_lease"] = lease
        return attributes


def make(config: Config, log: Logger) -> tuple[Credentials, LocalAuth]:
    """The providers the settings ask for; botocore is loaded only by those that need it."""
    aws = config.aws
    if not (aws.db_secret or aws.iam_auth or aws.client_password_secret):
        return Credentials(config), LocalAuth(config.db_user, [config.local_password])
    from .aws.credentials import make_aws_credentials

    return make_aws_credentials(config, log)
