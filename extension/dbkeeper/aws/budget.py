"""The fleet-wide connection budget: at most N upstream connections across every sandbox of every
function that shares a database, kept in a DynamoDB table.

Table: partition key `pk` (S), sort key `sk` (S), TTL attribute `ttl`. Per budget (`pk` = the
budget's name) there are N **slots** `slot#00000` ... and a `meta` item. A sandbox takes a slot
before it opens an upstream connection, with a conditional put (`attribute_not_exists(sk)`): the
slot's key is the lock, so no two holders can share it and no more than N can exist. The item
is the **lease**: token (unique per lease, also sent as the connection attribute
`dbkeeper_lease`), sandbox id, function, `expires` (ms) and `ttl` (s, so DynamoDB deletes
forgotten items eventually; correctness never waits for TTL, every condition compares `expires`).

No timer runs across a freeze. A lease is renewed when its connection is borrowed and it is older
than half its lifetime, so a session always starts with at least half a lifetime left. It is
deleted when its connection closes and at SHUTDOWN.

Reaping. A sandbox that vanished without SHUTDOWN leaves its lease and, on the server, its session
(no FIN ever reaches the database). Once the lease has expired:
- a sandbox renewing its own lease also deletes expired leases it finds, after killing their
  sessions over its own connection (found in performance_schema.session_account_connect_attrs by
  the lease token): the server never sees the orphan and its replacement at once;
- a sandbox waiting for a slot takes over a lease expired for more than half a lifetime (no live
  holder renewed meanwhile), opens its connection and kills the orphan as its very first command.
  Only in that case the server holds, for that one round trip, the orphan and its replacement.
Killing needs performance_schema=ON (MariaDB's default is OFF; RDS MySQL's is ON with
Performance Insights) and the same database user (a user may always kill its own sessions);
without it the lease is reclaimed and the orphan waits for the server's wait_timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

from pymysql.constants import COMMAND

from ..errors import PoolTimeout, UpstreamError
from ..protocol import messages
from ..protocol.packets import read_lenenc_int
from .sdk import Aws, AwsError

if TYPE_CHECKING:
    from ..config import Config
    from ..credentials import SandboxIdentity
    from ..log import Logger
    from ..upstream import UpstreamConnection

Item = dict[str, Any]  # a DynamoDB item in the low-level client's typed form

_CONDITION_FAILED = "ConditionalCheckFailedException"
_WAIT_FIRST = 0.05
_WAIT_CAP = 1.0
_CALL_TIMEOUT = 2.0
# worth waiting out until the borrow timeout (anything else fails the connect at once)
_TRANSIENT = frozenset(("Timeout", "ThrottlingException", "ProvisionedThroughputExceededException",
                        "RequestLimitExceeded", "InternalServerError", "ServiceUnavailable"))


class BudgetFull(PoolTimeout):
    """Every slot of the fleet's budget stayed taken for the whole borrow timeout."""


class Lease(NamedTuple):
    slot: int
    token: str
    renewed: float  # epoch seconds of the last write
    orphans: tuple[str, ...] = ()  # tokens of sessions to kill (taken over from a vanished holder)


def _now() -> float:
    return time.time()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class Budget:
    def __init__(self, config: Config, log: Logger, aws: Aws, identity: SandboxIdentity) -> None:
        settings = config.aws
        self._aws = aws
        self._log = log
        self._table = settings.budget_table
        self._name = settings.budget_name or (settings.db_secret if settings.db_secret and not config.db_host
                                              else f"{config.db_host}:{config.db_port}")
        self._fixed = settings.budget_max
        self._percent = settings.budget_percent
        self._life = float(settings.budget_lease)
        self._identity = identity
        self._max_connections: int | None = None  # the server's, in percent mode
        self.held = 0
        self.max = self._fixed
        self._leases: set[Lease] = set()
        self.waiting = 0  # acquires under way
        self._wait = _WAIT_FIRST  # the poll interval while the budget is full (grows to _WAIT_CAP)
        self._last_seen = (0, self._fixed or 1)  # (leases held, limit) at the last read

    # --- DynamoDB, on a worker thread ----------------------------------------------------------
    async def _call(self, operation: str, timeout: float = _CALL_TIMEOUT, **params: Any) -> Any:
        """One DynamoDB call on a worker thread, abandoned after `timeout` s: a slow DynamoDB must
        not hold a client past its borrow timeout. (An abandoned put may still land: that lease
        then expires unused and is reclaimed like a vanished sandbox's.)"""
        call = self._aws.run(lambda: self._aws.call("dynamodb", operation, TableName=self._table, **params))
        try:
            return await asyncio.wait_for(call, max(timeout, 0.01))
        except TimeoutError:
            raise AwsError(f"dynamodb.{operation} took longer than {timeout * 1000:.0f} ms", "Timeout") from None

    def _key(self, slot: int | str) -> Item:
        sk = slot if isinstance(slot, str) else f"slot#{slot:05d}"
        return {"pk": {"S": self._name}, "sk": {"S": sk}}

    async def _read(self, timeout: float = _CALL_TIMEOUT) -> tuple[dict[int, Item], int | None]:
        """Every slot item of this budget (strongly consistent), and the meta item's max_connections."""
        slots, meta, start = {}, None, None
        while True:
            params = dict(KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": self._name}},
                          ConsistentRead=True)
            if start:
                params["ExclusiveStartKey"] = start
            reply = await self._call("query", timeout, **params)
            for item in reply.get("Items", []):
                sk = item["sk"]["S"]
                if sk == "meta":
                    meta = int(item["max_connections"]["N"]) if "max_connections" in item else None
                elif sk.startswith("slot#"):
                    slots[int(sk[5:])] = item
            start = reply.get("LastEvaluatedKey")
            if not start:
                return slots, meta

    def _item(self, slot: int, token: str, now: float, orphans: tuple[str, ...]) -> Item:
        item = {**self._key(slot), "token": {"S": token}, "sandbox": {"S": self._identity.sandbox_id},
                "function": {"S": self._identity.function_name or "-"},
                "expires": {"N": str(_ms(now + self._life))}, "ttl": {"N": str(int(now + 2 * self._life))}}
        if orphans:
            item["orphans"] = {"L": [{"S": t} for t in orphans]}
        return item

    async def _put(self, slot: int, orphans: tuple[str, ...], condition: str, values: Item | None = None,
                   timeout: float = _CALL_TIMEOUT) -> Lease | None:
        token = os.urandom(9).hex()
        now = _now()
        params = dict(Item=self._item(slot, token, now, orphans), ConditionExpression=condition)
        if values:
            params.update(ExpressionAttributeNames={"#token": "token", "#expires": "expires"},
                          ExpressionAttributeValues=values)
        try:
            await self._call("put_item", timeout, **params)
        except AwsError as exc:
            if exc.code == _CONDITION_FAILED:
                return None
            raise
        lease = Lease(slot, token, now, orphans)
        self._leases.add(lease)
        self.held = len(self._leases)
        return lease

    def _limit(self, meta: int | None) -> int:
        if self._fixed is not None:
            return self._fixed
        if meta is not None:
            self._max_connections = meta
        if self._max_connections is None:
            return 1  # the server's max_connections is learnt over the first connection
        self.max = max(1, int(self._max_connections * (self._percent or 100.0) / 100))
        return self.max

    # --- the pool's side ----------------------------------------------------------------------
    def full(self, waited_ms: float | None = None) -> BudgetFull:
        held, limit = self._last_seen
        return BudgetFull(f"the fleet connection budget is full: {held} of {limit} leases held in DynamoDB table "
                          f"{self._table} (budget {self._name})"
                          + (f"; waited {waited_ms:.0f} ms" if waited_ms is not None else ""))

    async def acquire(self, deadline: float) -> Lease:
        """A lease for one new upstream connection; waits (polling, jittered) until `deadline`
        (event-loop time) and then raises BudgetFull."""
        self.waiting += 1
        started = time.monotonic()
        try:
            lease = await self._acquire(deadline)
        finally:
            self.waiting -= 1
        self._log.info("budget_lease_taken", slot=lease.slot, sandbox=self._identity.sandbox_id, held=self.held,
                       ms=round((time.monotonic() - started) * 1000, 3))
        return lease

    async def _acquire(self, deadline: float) -> Lease:
        loop = asyncio.get_running_loop()
        started = loop.time()
        unavailable: AwsError | None = None  # a call that failed for a reason worth waiting out
        seen_full = False  # a look at the table found every slot taken
        while True:
            try:
                lease = await self._try_once(deadline)
            except AwsError as exc:
                if exc.code not in _TRANSIENT:
                    raise
                unavailable = exc
            else:
                if lease is not None:
                    self._wait = _WAIT_FIRST
                    return lease
                seen_full = True
            remaining = deadline - loop.time()
            if remaining <= 0:
                if unavailable is not None and not seen_full:
                    raise unavailable  # not one answer in the whole wait
                raise self.full((loop.time() - started) * 1000)  # full, as last seen
            # The poll interval is the sandbox's, not the client's: a client arriving after another
            # one gave up does not start polling fast again.
            await asyncio.sleep(min(random.uniform(self._wait / 2, self._wait), remaining))
            self._wait = min(self._wait * 2, _WAIT_CAP)

    async def _try_once(self, deadline: float) -> Lease | None:
        """One look at the table: a free slot, else one whose holder vanished; None: all taken."""
        loop = asyncio.get_running_loop()
        slots, meta = await self._read(max(deadline - loop.time(), _WAIT_FIRST))
        limit = self._limit(meta)
        now_ms = _ms(_now())
        free = [slot for slot in range(limit) if slot not in slots]
        random.shuffle(free)  # sandboxes starting together try different slots
        for slot in free[:4]:
            lease = await self._put(slot, (), "attribute_not_exists(sk)",
                                    timeout=max(deadline - loop.time(), _CALL_TIMEOUT / 4))
            if lease is not None:
                return lease
        cutoff = now_ms - _ms(self._life / 2)  # live holders had half a lifetime to reap it first
        for slot, item in sorted(slots.items()):
            if slot < limit and int(item["expires"]["N"]) < cutoff:
                orphans = (item["token"]["S"], *(o["S"] for o in item.get("orphans", {}).get("L", [])))
                lease = await self._put(slot, orphans[:16], "#token = :old AND #expires < :cutoff",
                                        {":old": item["token"], ":cutoff": {"N": str(cutoff)}})
                if lease is not None:
                    self._log.info("budget_lease_taken_over", slot=slot, from_sandbox=item.get("sandbox", {}).get("S"),
                                   expired_ms=now_ms - int(item["expires"]["N"]))
                    return lease
        self._last_seen = (sum(1 for slot in slots if slot < limit), limit)
        return None

    async def opened(self, lease: Lease, connection: UpstreamConnection) -> None:
        """Right after the connection opened, before anyone uses it: kill the sessions of a lease
        taken over, and learn the server's max_connections in percent mode."""
        if self._percent is not None and self._max_connections is None:
            rows = await select(connection, "SELECT @@max_connections")
            self._max_connections = int(rows[0][0] or 0)
            self._limit(self._max_connections)
            try:
                await self._call("put_item", Item={**self._key("meta"),
                                                   "max_connections": {"N": str(self._max_connections)}})
            except AwsError as exc:
                self._log.warning("budget_call_failed", operation="put_item", error=str(exc))
        if lease.orphans:
            killed = await kill_sessions(connection, lease.orphans, self._log)
            self._log.info("budget_orphans_killed", slot=lease.slot, sessions=killed)

    async def check(self, lease: Lease | None, connection: UpstreamConnection) -> Lease | None:
        """At borrow: the lease (renewed when older than half its lifetime), or None when it was
        lost (expired and reaped while this sandbox was frozen): the connection must go."""
        if lease is None:
            return None
        now = _now()
        if now - lease.renewed < self._life / 2:
            return lease
        slots, meta = await self._read()
        self._limit(meta)
        item = slots.get(lease.slot)
        if item is None or item["token"]["S"] != lease.token:
            self._forget(lease)
            self._log.warning("budget_lease_lost", slot=lease.slot)
            return None
        try:
            await self._call("update_item", Key=self._key(lease.slot),
                             UpdateExpression="SET #expires = :expires, #ttl = :ttl",
                             ConditionExpression="#token = :mine",
                             ExpressionAttributeNames={"#expires": "expires", "#ttl": "ttl", "#token": "token"},
                             ExpressionAttributeValues={":expires": {"N": str(_ms(now + self._life))},
                                                        ":ttl": {"N": str(int(now + 2 * self._life))},
                                                        ":mine": {"S": lease.token}})
        except AwsError as exc:
            if exc.code != _CONDITION_FAILED:
                raise
            self._forget(lease)
            self._log.warning("budget_lease_lost", slot=lease.slot)
            return None
        renewed = lease._replace(renewed=now)
        self._leases.discard(lease)
        self._leases.add(renewed)
        now_ms = _ms(now)
        for slot, item in slots.items():  # reap what vanished sandboxes left, over this connection
            if slot != lease.slot and int(item["expires"]["N"]) < now_ms:
                tokens = (item["token"]["S"], *(o["S"] for o in item.get("orphans", {}).get("L", [])))
                killed = await kill_sessions(connection, tokens, self._log)
                try:
                    await self._call("delete_item", Key=self._key(slot), ConditionExpression="#token = :old",
                                     ExpressionAttributeNames={"#token": "token"},
                                     ExpressionAttributeValues={":old": item["token"]})
                except AwsError as exc:
                    if exc.code != _CONDITION_FAILED:
                        raise
                    continue
                self._log.info("budget_lease_reaped", slot=slot, from_sandbox=item.get("sandbox", {}).get("S"),
                               sessions_killed=killed, expired_ms=now_ms - int(item["expires"]["N"]))
        return renewed

    def _forget(self, lease: Lease) -> None:
        self._leases.discard(lease)
        self.held = len(self._leases)

    def release(self, lease: Lease) -> Coroutine[Any, Any, None]:
        """Give a lease back (its connection is closed): no longer counted as held from now on;
        the returned coroutine deletes it from the table if it is still ours."""
        self._forget(lease)
        return self._delete(lease)

    async def _delete(self, lease: Lease) -> None:
        try:
            await self._call("delete_item", Key=self._key(lease.slot), ConditionExpression="#token = :mine",
                             ExpressionAttributeNames={"#token": "token"},
                             ExpressionAttributeValues={":mine": {"S": lease.token}})
        except AwsError as exc:
            if exc.code != _CONDITION_FAILED:  # not ours any more: nothing to give back
                self._log.warning("budget_call_failed", operation="delete_item", error=str(exc))

    async def close(self, timeout: float, pending: list[asyncio.Task[None]]) -> int:
        """SHUTDOWN: give every lease back, in parallel (with the releases already under way),
        within `timeout` seconds. Returns how many releases finished."""
        tasks = [asyncio.ensure_future(self.release(lease)) for lease in list(self._leases)] + pending
        if not tasks:
            return 0
        done, _ = await asyncio.wait(tasks, timeout=timeout)
        return len(done)


# --- SQL over an upstream connection nobody else uses at that moment ----------------------------
async def select(connection: UpstreamConnection, sql: str) -> list[list[str | None]]:
    """Rows of a text-protocol result set (the connection has no CLIENT_DEPRECATE_EOF)."""
    connection.write_packet(bytes((COMMAND.COM_QUERY,)) + sql.encode(), 0)
    first = (await connection.read_packet()).payload
    if messages.is_err(first):
        error = messages.parse_err(first)
        raise UpstreamError(f"{sql!r} failed: ({error.errno}) {error.message}", error.errno)
    if messages.is_ok(first):
        return []
    columns = read_lenenc_int(first, 0)[0] or 0
    for _ in range(columns + 1):  # column definitions, then EOF
        await connection.read_packet()
    rows: list[list[str | None]] = []
    while True:
        payload = (await connection.read_packet()).payload
        if payload[:1] == b"\xfe" and len(payload) < 9:
            return rows
        if messages.is_err(payload):
            raise UpstreamError(f"{sql!r} failed: {messages.parse_err(payload).message}")
        row: list[str | None] = []
        position = 0
        for _ in range(columns):
            if payload[position] == 0xFB:
                row.append(None)
                position += 1
                continue
            length, position = read_lenenc_int(payload, position)
            row.append(payload[position:position + (length or 0)].decode())
            position += length or 0
        rows.append(row)


async def kill_sessions(connection: UpstreamConnection, tokens: tuple[str, ...], log: Logger) -> int:
    """KILL every session of this account whose dbkeeper_lease attribute is one of `tokens`."""
    quoted = ",".join("'" + token + "'" for token in tokens if token.isalnum())
    if not quoted:
        return 0
    try:
        rows = await select(connection, "SELECT DISTINCT PROCESSLIST_ID "
                                        "FROM performance_schema.session_account_connect_attrs "
                                        f"WHERE ATTR_NAME = 'dbkeeper_lease' AND ATTR_VALUE IN ({quoted})")
        if not rows and (await select(connection, "SELECT @@performance_schema"))[0][0] not in ("1", "ON"):
            log.warning("budget_orphans_not_found", reason="performance_schema is off: the server keeps them "
                        "until wait_timeout")
            return 0
    except UpstreamError as exc:
        log.warning("budget_orphans_not_found", reason=str(exc))
        return 0
    return await connection.kill([int(thread_id or 0) for (thread_id,) in rows]) if rows else 0
