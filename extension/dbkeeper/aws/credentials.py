"""Upstream credentials from AWS Secrets Manager and RDS IAM authentication tokens, and the local
password from Secrets Manager.

Secret (DBKEEPER_DB_SECRET, RDS shape {"username","password","host","port","dbname","engine"}):
fetched at the first connect (AWSCURRENT) and cached. When the server answers 1045 with it, the
secret is fetched again and its versions are tried in turn, newest first, skipping what the server
refused: AWSCURRENT, AWSPREVIOUS, AWSPENDING (while it refuses them all: one read per 10 s).
That covers every moment of a rotation: the database changed
and the secret not yet (AWSPENDING), the secret changed and this sandbox's copy is old
(AWSCURRENT), the secret changed before the database (AWSPREVIOUS).

IAM (DBKEEPER_DB_IAM_AUTH): a token per connect from botocore's RDS generate_db_auth_token (a
SigV4 presigned URL signed locally with the function's role credentials; no API call, valid 15
min). The password field of the target is the token; upstream.py sends it with
mysql_clear_password, over verified TLS only.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..credentials import Credentials, LocalAuth, Target
from ..protocol.auth import native_password_hash, verify_native
from .sdk import Aws, AwsError, shared

if TYPE_CHECKING:
    from ..log import Logger

SecretValue = dict[str, Any]  # one version of a secret, as its JSON object

STAGES = ("AWSCURRENT", "AWSPREVIOUS", "AWSPENDING")
MIN_REFETCH_INTERVAL = 1.0  # never more than one Secrets Manager read a second
RETRY_REFUSED = 10.0        # while the server refuses every version: one read per 10 s


class SecretVersions:
    """The versions of one secret as JSON objects, by stage; fetched on demand and cached.
    `started` is when the fetch behind `values` began: a caller that must see what the secret
    held at some moment asks for a fetch started after it (`refresh`)."""

    def __init__(self, aws: Aws, secret_id: str, log: Logger) -> None:
        self._aws = aws
        self.secret_id = secret_id
        self._log = log
        self.values: dict[str, SecretValue] = {}
        self.generation = 0
        self.started = float("-inf")  # monotonic start of the fetch behind `values`
        self._fetching: asyncio.Future[None] | None = None
        self._fetching_started = 0.0

    def _fetch_stages(self, stages: tuple[str, ...]) -> dict[str, SecretValue]:
        values: dict[str, SecretValue] = {}
        for stage in stages:
            try:
                reply = self._aws.call("secretsmanager", "get_secret_value", SecretId=self.secret_id,
                                       VersionStage=stage)
            except AwsError as exc:
                if stage != "AWSCURRENT" and exc.code == "ResourceNotFoundException":
                    continue  # no such version (no rotation yet, or none in progress)
                raise
            text = reply.get("SecretString")
            if text is None:
                raise AwsError(f"secret {self.secret_id} ({stage}) has no SecretString")
            try:
                value = json.loads(text)
            except ValueError:
                value = {"password": text}  # a plain-text secret is a password
            if not isinstance(value, dict):
                raise AwsError(f"secret {self.secret_id} ({stage}) is not a JSON object")
            values[stage] = value
        return values

    async def load(self, stages: tuple[str, ...] = ("AWSCURRENT",)) -> None:
        """Values from any fetch (the cold path: one call, or the one already under way)."""
        while not self.values:
            if self._fetching is not None:
                await asyncio.shield(self._fetching)
            else:
                await self._fetch(stages)

    async def refresh(self, newer_than: float, stages: tuple[str, ...] = STAGES) -> None:
        """Make `values` come from a fetch that started at or after `newer_than` (monotonic).
        One fetch at a time, shared by every caller; at most one per MIN_REFETCH_INTERVAL."""
        while self.started < newer_than:
            if self._fetching is not None:
                started = self._fetching_started
                await asyncio.shield(self._fetching)
                if started >= newer_than:
                    return
                continue
            wait = self.started + MIN_REFETCH_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await self._fetch(stages)

    async def _fetch(self, stages: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        future = self._fetching = loop.create_future()
        started = self._fetching_started = time.monotonic()
        try:
            values = await self._aws.run(self._fetch_stages, stages)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else AwsError("cancelled"))
            future.exception()  # marked retrieved: a fetch nobody else waited for is not an error
            raise
        finally:
            self._fetching = None
        self.values = values
        self.started = started
        self.generation += 1
        future.set_result(None)
        self._log.info("secret_fetched", secret=self.secret_id, stages=sorted(values),
                       ms=round((time.monotonic() - started) * 1000, 3), sdk=self._aws.source)


class SecretCredentials(Credentials):
    def __init__(self, config: Config, log: Logger, aws: Aws) -> None:
        self._config = config
        self._log = log
        self.versions = SecretVersions(aws, config.aws.db_secret or "", log)
        self._failed: set[tuple[str, str]] = set()  # (user, password) the server refused
        self._refetch_from: float | None = None      # a 1045 asked for a fetch started after this
        self._refetched_at: float | None = None      # when a 1045 last caused a read

    def _target_of(self, stage: str, value: SecretValue) -> Target:
        config = self._config
        port = value.get("port") or config.db_port
        return Target(host=str(value.get("host") or config.db_host), port=int(port),
                      user=str(value.get("username") or config.db_user),
                      password=str(value.get("password") if value.get("password") is not None else config.db_password),
                      database=str(value.get("dbname") or config.db_name or "") or None, source=f"secret:{stage}")

    def candidates(self) -> list[Target]:
        seen, targets = set(), []
        for stage in STAGES:
            value = self.versions.values.get(stage)
            if value is None:
                continue
            target = self._target_of(stage, value)
            if (target.user, target.password) not in seen:
                seen.add((target.user, target.password))
                targets.append(target)
        return targets

    async def get(self) -> Target:
        versions = self.versions
        if not versions.values:
            await versions.load()
        elif self._refetch_from is not None:
            # what the server refused stays refused: the versions are tried newest first, skipping it
            await versions.refresh(self._refetch_from)
            self._refetch_from = None
        targets = self.candidates()
        return next((t for t in targets if (t.user, t.password) not in self._failed), targets[0])

    def invalidate(self, failed: Target) -> bool:
        """The server refused `failed` (1045): try the secret's other versions, and read it again
        (it was probably rotated); while the server keeps refusing every version, read it again at
        most once per RETRY_REFUSED, and meanwhile answer at once (like a direct connect)."""
        self._failed.add((failed.user, failed.password))
        if any((t.user, t.password) not in self._failed for t in self.candidates()):
            return True
        now = time.monotonic()
        if self._refetched_at is not None and now - self._refetched_at < RETRY_REFUSED:
            return False
        self._refetched_at = self._refetch_from = now
        self._log.info("secret_refetch", secret=self.versions.secret_id, reason="access_denied",
                       rejected=failed.source)
        return True


class IamCredentials(Credentials):
    """Host, port, user and database from `base` (the settings or the secret); the password is a
    fresh RDS IAM authentication token for every connect."""

    def __init__(self, config: Config, log: Logger, aws: Aws, base: Credentials) -> None:
        self._config = config
        self._aws = aws
        self._base = base
        self._log = log

    def _token(self, target: Target) -> str:
        client = self._aws.client("rds")
        try:
            return str(client.generate_db_auth_token(DBHostname=target.host, Port=target.port,
                                                     DBUsername=target.user, Region=self._config.aws.region))
        except Exception as exc:  # no credentials, no region
            raise AwsError(f"generating an RDS IAM token failed: {exc}") from exc

    async def get(self) -> Target:
        target = await self._base.get()
        token = await self._aws.run(self._token, target)
        return target._replace(password=token, source="iam")

    def invalidate(self, failed: Target) -> bool:
        return False  # every connect has a new token already: a refusal is the IAM policy's


class AwsLocalAuth(LocalAuth):
    """The local login when a secret is involved. Users: DBKEEPER_DB_USER, else the DB secret's
    username. Passwords: DBKEEPER_CLIENT_PASSWORD, else a key of DBKEEPER_CLIENT_PASSWORD_SECRET,
    else the DB secret's password. Of a secret both the current and the previous version are
    accepted, so a function that reads the secret itself logs in whether its copy or dbkeeper's
    is the newer one; a proof matching neither makes dbkeeper fetch the secret again (at most
    once a second; only when the secret may have changed since)."""

    def __init__(self, config: Config, user_secret: SecretCredentials | None,
                 password_versions: SecretVersions | None, key: str):
        self._config = config
        self._user_secret = user_secret
        self._versions = password_versions
        self._key = key
        self._pairs: list[tuple[str, bytes]] = []
        self._built_from: tuple[float, float] | None = None

    async def _known(self) -> list[tuple[str, bytes]]:
        users_from = self._user_secret.versions if self._user_secret is not None and not self._config.db_user else None
        if self._versions is not None and not self._versions.values:
            await self._versions.load(("AWSCURRENT", "AWSPREVIOUS"))
        if users_from is not None and not users_from.values:
            await users_from.load()
        stamp = (users_from.generation if users_from else 0, self._versions.generation if self._versions else 0)
        if stamp != self._built_from:
            if users_from is not None:
                users = {str(v.get("username") or "") for v in users_from.values.values()} - {""}
            else:
                users = {self._config.db_user}
            if self._versions is not None:
                passwords = {str(v[self._key]) for stage, v in self._versions.values.items()
                             if stage != "AWSPENDING" and v.get(self._key) is not None}
            else:
                passwords = {self._config.client_password or ""}
            self._pairs = [(u, native_password_hash(p)) for u in users for p in passwords]
            self._built_from = stamp
        return self._pairs

    async def verify(self, user: str, scramble: bytes, proof: bytes, trusted: bool = False) -> bool:
        asked = time.monotonic()
        if self._matches(await self._known(), user, scramble, proof, trusted):
            return True
        if self._versions is None or self._versions.started >= asked:
            return False  # what we know was read after the client connected: the password is wrong
        # The client read the secret before it connected: a fetch started now sees what it saw.
        await self._versions.refresh(asked)
        return self._matches(await self._known(), user, scramble, proof, trusted)

    @staticmethod
    def _matches(pairs: list[tuple[str, bytes]], user: str, scramble: bytes, proof: bytes, trusted: bool) -> bool:
        return any(user == known and (trusted or verify_native(password_hash, scramble, proof))
                   for known, password_hash in pairs)


def make_aws_credentials(config: Config, log: Logger) -> tuple[Credentials, LocalAuth]:
    settings = config.aws
    aws = shared(config, log)
    secret = SecretCredentials(config, log, aws) if settings.db_secret else None
    credentials: Credentials = secret or Credentials(config)
    if settings.iam_auth:
        credentials = IamCredentials(config, log, aws, credentials)

    versions, key = None, "password"
    if config.client_password is None:
        if settings.client_password_secret:
            secret_id, _, key = settings.client_password_secret.partition("#")
            key = key or "password"
            versions = secret.versions if secret is not None and secret_id == settings.db_secret \
                else SecretVersions(aws, secret_id, log)
        elif secret is not None:
            versions = secret.versions
    if secret is None and versions is None:
        return credentials, LocalAuth(config.db_user, [config.local_password])
    return credentials, AwsLocalAuth(config, secret, versions, key)
