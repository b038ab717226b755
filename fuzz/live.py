"""The live campaign: mutated sessions against the BUILT extension (spawned from dist/layer-x86_64
in the project's Lambda sandbox, as tests/dbkeeper_process.py does) with a throwaway MariaDB
behind it (tests/mariadb.py).

An input is a script (JSON, so a kept input reads as what it does): one to three fuzz clients,
each connecting over TCP or the Unix socket, logging in with a (possibly mutated) handshake
response, sending command packets (mutated SQL, empty packets, wrong lengths and sequence ids,
splits, pipelining), reading for a while, and ending with COM_QUIT, a close, a half-close or a
reset. Scripts are made by mutating the seed scripts in fuzz/corpus/live/ with a seeded RNG.

After EVERY input (cheap, so a finding names its input):
  * as many well-behaved clients as the pool holds log in at once (the pool is back to full
    size: none refused with 1040, each on its own upstream connection), and each asks for a
    value of its own: it must get exactly that, no user variable, temporary table or
    uncommitted row of any earlier session (fuzz clients' or the victim's), autocommit back on;
  * the extension spent less than CPU_LIMIT_S of CPU on the input (super-linear work stalls
    every session: the event loop is single-threaded).
A victim session runs alongside each input: it leaves a user variable, a temporary table and an
uncommitted row behind, all marked with a nonce that must never be seen again.
Every CHECK_EVERY inputs (and at the end): PyMySQL's `SELECT 1` works, the server's PROCESSLIST
shows exactly POOL_SIZE sessions of the extension's user, and the extension's RSS and open
descriptors are back to what they were after warm-up.

A failed check keeps the input (with the one before it) as fuzz/corpus/live/crash-<sha1>.json and
prints the replay command; the extension is then started afresh and the campaign goes on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import select
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import fuzz
from fuzz import procstat

CORPUS = fuzz.REPO / "fuzz" / "corpus" / "live"
LAYER = fuzz.REPO / "dist" / "layer-x86_64"
POOL_SIZE = 4
CHECK_EVERY = 200
CPU_LIMIT_S = 1.5          # one input costs the extension milliseconds; seconds mean super-linear work
FD_SLACK = 2               # descriptors above the warm baseline tolerated at a quiet moment
RSS_GROWTH_LIMIT_KB = 48 * 1024
MAX_SEND = 256 * 1024      # bytes one script may send in all
ENV = {
    "DBKEEPER_POOL_SIZE": str(POOL_SIZE),
    "DBKEEPER_BORROW_TIMEOUT_MS": "3000",
    "DBKEEPER_LOG_LEVEL": "warning",
}

COM_QUIT, COM_QUERY, COM_PING, COM_PROCESS_KILL = 0x01, 0x03, 0x0E, 0x0C


class LiveFinding(AssertionError):
    pass


# --------------------------------------------------------------------------- scripts

def packet(payload: bytes, sequence: int = 0) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((sequence & 0xFF,)) + payload


def query(sql: bytes) -> bytes:
    return packet(b"\x03" + sql)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode(text: str) -> bytes:
    return base64.b64decode(text)


def load_seeds() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(CORPUS.glob("seed-*.json"))]


# SQL the mutator splices into COM_QUERY packets: what drivers and applications send, slow
# statements (replies still on their way when a client leaves), and session state that must not
# outlive the session.
SQL = [
    b"SELECT 1", b"SET NAMES utf8mb4", b"SET autocommit=0", b"SET AUTOCOMMIT = 1", b"SELECT @@version",
    b"DO SLEEP(0.1)", b"SELECT SLEEP(0.3), 'fuzz-secret'", b"SELECT 'fuzz-secret' AS s", b"BEGIN",
    b"SET @fuzz_var = 'fuzz-secret'", b"CREATE TEMPORARY TABLE fuzz_tmp (v VARCHAR(64))",
    b"INSERT INTO fuzz_tmp VALUES ('fuzz-secret')", b"INSERT INTO fuzz_rows VALUES ('fuzz-uncommitted')",
    b"START TRANSACTION", b"ROLLBACK", b"SELECT * FROM fuzz_tmp", b"SELECT 1; SELECT 2",
    b"SHOW VARIABLES LIKE 'char%'", b"SELECT REPEAT('x', 100000)", b"SELECT * FROM no_such_table",
    b"SET NAMES latin1 COLLATE latin1_swedish_ci", b"SET SESSION sql_mode = 'ANSI'", b"USE appdb",
    b"SELECT GET_LOCK('fuzz', 0)", b"LOAD DATA LOCAL INFILE '/tmp/fuzz.csv' INTO TABLE fuzz_rows",
]


def mutate(rng: random.Random, script: dict) -> dict:
    script = json.loads(json.dumps(script))
    for _ in range(rng.randint(1, 4)):
        rng.choice(_MUTATIONS)(rng, script)
    sanitize(script)
    return script


def _sends(script: dict) -> list[dict]:
    return [s for s in script["steps"] if s["do"] == "send"]


def _m_duplicate(rng, script):
    steps = script["steps"]
    if steps:
        at = rng.randrange(len(steps))
        steps.insert(at, json.loads(json.dumps(steps[at])))


def _m_delete(rng, script):
    steps = script["steps"]
    if len(steps) > 1:
        del steps[rng.randrange(len(steps))]


def _m_swap(rng, script):
    steps = script["steps"]
    if len(steps) > 1:
        a, b = rng.randrange(len(steps)), rng.randrange(len(steps))
        steps[a], steps[b] = steps[b], steps[a]


def _m_insert_action(rng, script):
    actors = script["actors"]
    actor = rng.randrange(len(actors))
    step = rng.choice([
        {"do": "read", "ms": rng.choice((0, 5, 20, 100, 400))},
        {"do": "end", "how": rng.choice(("quit", "close", "reset", "shutdown"))},
        {"do": "send", "data": encode(query(rng.choice(SQL)))},
        {"do": "send", "data": encode(b"\x00\x00\x00\x00")},  # an empty packet
        {"do": "send", "data": encode(packet(bytes((rng.randrange(256),)) + rng.randbytes(rng.randrange(12))))},
    ])
    step["actor"] = actor
    script["steps"].insert(rng.randint(0, len(script["steps"])), step)


def _m_new_actor(rng, script):
    if len(script["actors"]) >= 3:
        return
    script["actors"].append({"via": rng.choice(("tcp", "unix")), "login": {}})
    actor = len(script["actors"]) - 1
    steps = [{"actor": actor, "do": "login"}] if rng.random() < 0.7 else []
    if rng.random() < 0.5:
        steps.append({"actor": actor, "do": "send", "data": encode(query(rng.choice(SQL)))})
    steps.append({"actor": actor, "do": "end", "how": rng.choice(("quit", "close", "reset"))})
    at = rng.randint(0, len(script["steps"]))
    script["steps"][at:at] = steps
    if rng.random() < 0.3:  # an actor that connects and hangs up before anything else
        script["steps"].insert(at, {"actor": actor, "do": "connect_only"})


def _m_split(rng, script):
    sends = _sends(script)
    if sends:
        step = rng.choice(sends)
        data = decode(step["data"])
        if len(data) > 1:
            cut = rng.randrange(1, len(data))
            index = script["steps"].index(step)
            second = dict(step, data=encode(data[cut:]))
            step["data"] = encode(data[:cut])
            script["steps"].insert(index + 1, second)
            if rng.random() < 0.5:
                script["steps"].insert(index + 1, {"actor": step["actor"], "do": "read", "ms": rng.choice((0, 10, 50))})


def _m_merge(rng, script):
    steps = script["steps"]
    for index in rng.sample(range(len(steps)), len(steps)):
        if index + 1 < len(steps) and steps[index]["do"] == "send" and steps[index + 1]["do"] == "send" \
                and steps[index]["actor"] == steps[index + 1]["actor"]:
            steps[index]["data"] = encode(decode(steps[index]["data"]) + decode(steps[index + 1]["data"]))
            del steps[index + 1]
            return
    # no neighbours to merge: pipeline a second query into a send
    sends = _sends(script)
    if sends:
        step = rng.choice(sends)
        step["data"] = encode(decode(step["data"]) + query(rng.choice(SQL)))


def _m_bytes(rng, script):
    sends = _sends(script)
    if not sends:
        return
    step = rng.choice(sends)
    data = bytearray(decode(step["data"]))
    kind = rng.randrange(7)
    if kind == 0 and data:  # flip a byte
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # a run of one byte, of any length up to 64 KiB
        at = rng.randint(0, len(data))
        run = bytes((rng.choice(b" \t\n\x00a;'"),)) * min(1 << 16, int(2 ** rng.uniform(0, 16)))
        data[at:at] = run
        _fix_first_length(data, rng)
    elif kind == 2 and len(data) >= 4:  # a wrong sequence id
        data[3] = rng.randrange(256)
    elif kind == 3 and len(data) >= 3:  # a length that lies
        length = rng.choice((0, 1, len(data) - 3, len(data) + 5, 0xFFFFFF, rng.randrange(1 << 24)))
        data[0:3] = length.to_bytes(3, "little")
    elif kind == 4:  # empty packets in front
        data[0:0] = b"\x00\x00\x00\x00" * rng.randint(1, 4)
    elif kind == 5 and data:  # truncated
        del data[rng.randrange(len(data)):]
    else:  # the SQL replaced
        data = bytearray(query(rng.choice(SQL)))
    step["data"] = encode(bytes(data))


def _m_setup_first(rng, script):
    """A statement shaped like session setup (whitespace runs of any length, stray tails) as a
    client's first command, where dbkeeper classifies it."""
    from fuzz.draw import Draw
    from fuzz.targets import setup_statement

    logins = [s for s in script["steps"] if s["do"] == "login"]
    if not logins:
        return
    login = rng.choice(logins)
    step = {"actor": login["actor"], "do": "send", "data": encode(query(setup_statement(Draw(rng.randbytes(64)))))}
    script["steps"].insert(script["steps"].index(login) + 1, step)


def _fix_first_length(data: bytearray, rng: random.Random) -> None:
    """After an insertion, usually keep the packet well-framed (else the server just waits)."""
    if len(data) >= 4 and rng.random() < 0.8:
        data[0:3] = min(len(data) - 4, 0xFFFFFE).to_bytes(3, "little")


def _m_login(rng, script):
    actor = rng.choice(script["actors"])
    login = actor.setdefault("login", {})
    kind = rng.randrange(7)
    if kind == 6:  # a client that allows LOAD DATA LOCAL INFILE (CLIENT_LOCAL_FILES)
        login["capabilities_xor"] = 1 << 7
    elif kind == 0:
        login["flip"] = [[rng.randrange(128), rng.randrange(256)] for _ in range(rng.randint(1, 3))]
    elif kind == 1:
        login["sequence"] = rng.randrange(256)
    elif kind == 2:
        login["truncate"] = rng.randrange(64)
    elif kind == 3:
        login["password"] = rng.choice(("wrong", ""))
    elif kind == 4:
        login["capabilities_xor"] = 1 << rng.randrange(32)
    else:
        login["garbage"] = encode(rng.randbytes(rng.randrange(64)))


def _m_burst(rng, script):
    """Clients that connect at once and vanish within milliseconds (a function killed at its
    timeout while the extension is still connecting for it)."""
    script["steps"].insert(rng.randint(0, len(script["steps"])),
                           {"actor": 0, "do": "burst", "n": rng.randint(2, 6), "ms": rng.choice((0, 1, 2, 5, 10)),
                            "how": rng.choice(("close", "reset"))})


def _m_end(rng, script):
    ends = [s for s in script["steps"] if s["do"] == "end"]
    if ends:
        rng.choice(ends)["how"] = rng.choice(("quit", "close", "reset", "shutdown"))


_MUTATIONS = (_m_duplicate, _m_delete, _m_swap, _m_insert_action, _m_insert_action, _m_new_actor, _m_split,
              _m_merge, _m_merge, _m_bytes, _m_bytes, _m_bytes, _m_login, _m_end, _m_burst, _m_setup_first,
              _m_setup_first)

_SLEEP = re.compile(rb"(SLEEP|BENCHMARK)\(([^)]*)\)", re.I)


def sanitize(script: dict) -> None:
    """Keep inputs within what the oracles can judge: bounded size, sleeps of at most 0.5 s, and
    no COM_PROCESS_KILL (the app user may kill its own sessions: the server doing what it is told
    is not a dbkeeper defect)."""
    total = 0
    for step in _sends(script):
        data = decode(step["data"])
        data = _SLEEP.sub(lambda m: b"SLEEP(0.3)", data)
        if len(data) > 4 and data[4] == COM_PROCESS_KILL:
            data = data[:4] + bytes((COM_PING,)) + data[5:]
        data = data[:max(0, MAX_SEND - total)]
        total += len(data)
        step["data"] = encode(data)


# --------------------------------------------------------------------------- running a script

class Actor:
    def __init__(self, spec: dict, target: Target):
        self.spec = spec
        self.target = target
        self.sock: socket.socket | None = None
        self.done = False

    def connect(self) -> None:
        if self.sock is not None or self.done:
            return
        if self.spec.get("via") == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = self.target.unix_socket
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (self.target.host, self.target.port)
        sock.settimeout(2.0)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            self.done = True
            return
        self.sock = sock

    def read(self, ms: float, until_packet: bool = False) -> bytes:
        """Whatever arrives within `ms` (one whole packet suffices when `until_packet`)."""
        if self.sock is None:
            return b""
        got = bytearray()
        deadline = time.monotonic() + ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(got)
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return bytes(got)
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.end("close")
                return bytes(got)
            got += chunk
            if until_packet and len(got) >= 4 and len(got) >= 4 + int.from_bytes(got[:3], "little"):
                return bytes(got)

    def send(self, data: bytes) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.end("close")

    def login(self) -> None:
        self.connect()
        if self.sock is None:
            return
        greeting = self.read(2000, until_packet=True)
        if len(greeting) < 5 or greeting[4] == 0xFF:
            return
        from tests.integration.raw_mysql import DEFAULT_CAPABILITIES, Handshake, RawClient

        spec = self.spec.get("login", {})
        if "garbage" in spec:
            self.send(decode(spec["garbage"]))
            return
        raw = RawClient(self.sock, 2.0)
        try:
            raw.handshake = Handshake.parse(greeting[4:4 + int.from_bytes(greeting[:3], "little")])
        except Exception:
            return
        password = spec.get("password", self.target.password)
        payload = bytearray(raw.handshake_response(self.target.user, password, self.target.database,
                                                   capabilities=DEFAULT_CAPABILITIES ^ spec.get("capabilities_xor", 0)))
        for position, value in spec.get("flip", []):
            if position < len(payload):
                payload[position] = value
        if "truncate" in spec:
            del payload[spec["truncate"]:]
        self.send(packet(bytes(payload), spec.get("sequence", 1)))
        self.read(1000, until_packet=True)

    def end(self, how: str) -> None:
        sock, self.sock = self.sock, None
        self.done = True
        if sock is None:
            return
        try:
            if how == "quit":
                sock.sendall(packet(b"\x01"))
            elif how == "reset" and sock.family == socket.AF_INET:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "shutdown":
                sock.shutdown(socket.SHUT_WR)
                self.sock = sock  # still open for reading until the script ends
                self.done = False
                return
        except OSError:
            pass
        sock.close()


def run_script(script: dict, target: Target) -> None:
    actors = [Actor(spec, target) for spec in script["actors"]]
    try:
        for step in script["steps"]:
            actor = actors[step["actor"] % len(actors)]
            action = step["do"]
            if actor.done and action != "end":
                continue
            if action == "burst":
                burst(step, target)
            elif action == "connect_only":
                actor.connect()
                actor.end("close")
            elif action == "login":
                actor.login()
            elif action == "send":
                actor.connect()
                actor.send(decode(step["data"]))
            elif action == "read":
                actor.read(step.get("ms", 20))
            elif action == "end":
                actor.end(step.get("how", "close"))
    finally:
        for actor in actors:
            actor.end("close")


def burst(step: dict, target: Target) -> None:
    sockets = []
    for _ in range(min(step.get("n", 2), 8)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((target.host, target.port))
        sockets.append(sock)
    select.select([], [], [], step.get("ms", 0) / 1000)  # the extension starts serving them meanwhile
    for sock in sockets:
        if step.get("how") == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# --------------------------------------------------------------------------- the checks

@dataclass
class Target:
    host: str
    port: int
    unix_socket: str
    user: str
    password: str
    database: str


def victim_session(target: Target, nonce: str):
    """A well-behaved client that leaves state behind (a user variable, a temporary table, an
    uncommitted row), all marked `nonce`; returned open, for the caller to end."""
    from tests.integration.raw_mysql import RawClient

    client = RawClient.connect(host=target.host, port=target.port, timeout=5)
    client.login(target.user, target.password, target.database)
    client.query(f"SET @victim = '{nonce}'")
    client.query(f"CREATE TEMPORARY TABLE victim_tmp (v VARCHAR(64)) SELECT '{nonce}' AS v")
    client.query("START TRANSACTION")
    client.query(f"INSERT INTO fuzz_rows VALUES ('{nonce}')")
    return client


_CHECK_SQL = ("SELECT '{nonce}', @victim, @fuzz_var, @@autocommit, "
              "(SELECT COUNT(*) FROM fuzz_rows WHERE v LIKE 'victim-%')")


def check_sessions(target: Target, count: int) -> list[int]:
    """`count` well-behaved clients at once; each must get its own answer and see nothing of any
    other session. Returns their upstream connection ids."""
    from tests.integration.raw_mysql import ConnectionClosed, RawClient, ServerError

    clients, ids = [], []
    try:
        for index in range(count):
            try:
                client = RawClient.connect(host=target.host, port=target.port, timeout=8)
                clients.append(client)
                client.login(target.user, target.password, target.database)
            except ServerError as exc:
                raise LiveFinding(f"well-behaved client {index + 1} of {count} refused: {exc.errno} {exc.message}") \
                    from exc
            except (ConnectionClosed, OSError) as exc:
                raise LiveFinding(f"well-behaved client {index + 1} of {count} could not log in: {exc!r}") from exc
        for client in clients:
            nonce = f"check-{uuid.uuid4().hex[:12]}"
            try:
                results = client.query(_CHECK_SQL.format(nonce=nonce))
                row = results[0].text_rows()[0] if len(results) == 1 and results[0].rows else None
                expected = (nonce, None, None, "1", "0")
                if row != expected:
                    raise LiveFinding(f"a well-behaved client asked for {expected} and got {row!r} "
                                      f"(results {results!r}): another session's reply or state")
                ids.append(int(client.scalar("SELECT CONNECTION_ID()")))
                try:
                    client.query("SELECT v FROM victim_tmp")
                    raise LiveFinding("a well-behaved client sees the victim's temporary table")
                except ServerError as exc:
                    if exc.errno != 1146:
                        raise LiveFinding(f"probing for the victim's temporary table: {exc.errno} {exc.message}") \
                            from exc
            except (ServerError, ConnectionClosed, OSError, AssertionError) as exc:
                if isinstance(exc, LiveFinding):
                    raise
                raise LiveFinding(f"a well-behaved client's query failed: {exc!r}") from exc
        if len(set(ids)) != count:
            raise LiveFinding(f"{count} clients at once share upstream connections: ids {ids}")
        return ids
    finally:
        for client in clients:
            client.quit()


@dataclass
class Campaign:
    seed: int
    inputs: int = 0
    seconds: float = 0.0
    findings: list[tuple[str, str]] = field(default_factory=list)
    first_finding_after: int | None = None
    rss_kb: list[int] = field(default_factory=list)   # [before, ..., after]
    fds: list[int] = field(default_factory=list)
    checks: int = 0
    restarts: int = 0
    slowest_input_cpu_s: float = 0.0
    extension_cpu_s: float = 0.0
    last_rss_fds: tuple[int, int] = (0, 0)


class LiveFuzzer:
    def __init__(self, log=print, layer: Path = LAYER, db=None):
        self.log = log
        self.layer = layer
        self.own_db = db is None
        self.db = db
        self.running = None
        self.pid = None
        self.baseline: tuple[int, int] | None = None

    # --- processes ----------------------------------------------------------------------------
    def start_database(self) -> None:
        from tests.mariadb import MariaDB

        if self.db is None:
            self.db = MariaDB().start()
        self.db.set_global("max_statement_time", 5)  # a bound the oracles can rely on
        self.db.query(f"CREATE TABLE IF NOT EXISTS {self.db.database}.fuzz_rows (v VARCHAR(64)) ENGINE=InnoDB")

    def start_extension(self) -> None:
        from tests.dbkeeper_process import start_dbkeeper
        from tests.mariadb import free_port

        if not (self.layer / "dbkeeper" / "lib" / "dbkeeper" / "main.py").exists():
            raise SystemExit(f"fuzz: no built layer in {self.layer}: run ./build.sh first")
        self.running = start_dbkeeper(self.layer, self.db, free_port(), ENV)
        self.pid = self.running.pid
        self.target = Target(self.running.host, self.running.port, self.running.unix_socket, self.db.user,
                             self.db.password, self.db.database)
        self.baseline = None

    def restart_extension(self) -> None:
        self.stop_extension()
        self.start_extension()

    def stop_extension(self) -> None:
        if self.running is not None:
            try:
                self.running.stop()
            except Exception as exc:  # noqa: BLE001 - the campaign goes on with a new one
                self.log(f"live: stopping the extension: {exc!r}")
            self.running = None

    def close(self) -> None:
        self.stop_extension()
        if self.db is not None and self.own_db:
            self.db.cleanup()

    # --- checks -------------------------------------------------------------------------------
    def alive(self) -> None:
        if self.pid is None or procstat.rss_kb(self.pid) is None:
            raise LiveFinding("the extension process is gone")

    def heavy_check(self, campaign: Campaign) -> None:
        """A normal driver works, the pool is back to full size server-side, RSS and fds flat."""
        import pymysql

        from tests.polling import wait_until

        self.alive()
        try:
            connection = pymysql.connect(host=self.target.host, port=self.target.port, user=self.target.user,
                                         password=self.target.password, database=self.target.database,
                                         connect_timeout=10, read_timeout=10)
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                value = cursor.fetchone()[0]
            connection.close()
        except pymysql.MySQLError as exc:
            raise LiveFinding(f"PyMySQL's SELECT 1 through the extension failed: {exc!r}") from exc
        if value != 1:
            raise LiveFinding(f"PyMySQL's SELECT 1 returned {value!r}")
        check_sessions(self.target, POOL_SIZE)
        count = lambda: len(self.db.processlist(self.target.user))  # noqa: E731
        if wait_until(lambda: count() == POOL_SIZE, timeout=10) is False:
            raise LiveFinding(f"the server shows {count()} sessions of {self.target.user!r}, "
                              f"the pool should hold exactly {POOL_SIZE}")
        quiet = lambda: procstat.open_fds(self.pid)  # noqa: E731
        if self.baseline is None:
            self.baseline = (procstat.rss_kb(self.pid), quiet())
            campaign.rss_kb.append(self.baseline[0])
            campaign.fds.append(self.baseline[1])
            self.log(f"live: baseline RSS {self.baseline[0] / 1024:.1f} MB, {self.baseline[1]} open fds")
        rss_base, fd_base = self.baseline
        if not wait_until(lambda: quiet() <= fd_base + FD_SLACK, timeout=5):
            raise LiveFinding(f"open descriptors {quiet()} vs {fd_base} after warm-up: a descriptor leak")
        rss = procstat.rss_kb(self.pid)
        if rss > rss_base + RSS_GROWTH_LIMIT_KB:
            raise LiveFinding(f"RSS {rss / 1024:.1f} MB vs {rss_base / 1024:.1f} MB after warm-up")
        campaign.checks += 1
        campaign.last_rss_fds = (rss, quiet())

    def one_input(self, script: dict, campaign: Campaign) -> None:
        nonce = f"victim-{uuid.uuid4().hex[:12]}"
        cpu_before = procstat.cpu_seconds(self.pid)
        victim = victim_session(self.target, nonce)
        run_script(script, self.target)
        if random.random() < 0.5:
            victim.quit()
        else:
            victim.abort()
        self.alive()
        check_sessions(self.target, POOL_SIZE)
        spent = procstat.cpu_seconds(self.pid) - cpu_before
        campaign.slowest_input_cpu_s = max(campaign.slowest_input_cpu_s, spent)
        if spent > CPU_LIMIT_S:
            raise LiveFinding(f"the extension spent {spent:.2f} s of CPU on one input (super-linear work blocks "
                              f"every session)")


def kind(message: str) -> str:
    """A finding's message without its numbers and nonces: the same defect found twice has one kind."""
    return re.sub(r"'[^']*'|\([^)]*\)|\[[^\]]*\]|[\d.]+", "N", message)


def keep(inputs: list[dict], message: str, seed: int, index: int) -> Path | None:
    """Keep the input as crash-<sha1>.json, unless an input of the same kind of finding is kept."""
    CORPUS.mkdir(parents=True, exist_ok=True)
    for kept in CORPUS.glob("crash-*.json"):
        if kind(json.loads(kept.read_text()).get("finding", "")) == kind(message):
            return None
    body = json.dumps({"finding": message, "seed": seed, "input": index, "inputs": inputs}, indent=1)
    path = CORPUS / f"crash-{hashlib.sha1(json.dumps(inputs).encode()).hexdigest()}.json"
    path.write_text(body + "\n")
    return path


def campaign(seconds: float | None, inputs: int | None, seed: int, log=print, stop_at_first: bool = False,
             layer: Path = LAYER, db=None, check_every: int = CHECK_EVERY) -> Campaign:
    rng = random.Random(seed)
    random.seed(seed)
    seeds = load_seeds()
    result = Campaign(seed)
    fuzzer = LiveFuzzer(log, layer, db)
    started = time.monotonic()
    deadline = started + seconds if seconds is not None else None
    try:
        fuzzer.start_database()
        fuzzer.start_extension()
        fuzzer.heavy_check(result)
        cpu_start = procstat.cpu_seconds(fuzzer.pid)
        previous: dict | None = None
        while (deadline is None or time.monotonic() < deadline) and (inputs is None or result.inputs < inputs):
            script = mutate(rng, rng.choice(seeds)) if result.inputs >= len(seeds) else seeds[result.inputs]
            result.inputs += 1
            try:
                fuzzer.one_input(script, result)
                if result.inputs % check_every == 0:
                    fuzzer.heavy_check(result)
                    log(f"live: {result.inputs} inputs, {time.monotonic() - started:.0f} s, checks passed "
                        f"(RSS {result.last_rss_fds[0] / 1024:.1f} MB, {result.last_rss_fds[1]} fds)")
            except LiveFinding as exc:
                kept = [s for s in (previous, script) if s is not None]
                path = keep(kept, str(exc), seed, result.inputs)
                relative = os.path.relpath(path, fuzz.REPO) if path else "(same kind kept already)"
                result.findings.append((relative, str(exc)))
                if result.first_finding_after is None:
                    result.first_finding_after = result.inputs
                log(f"live: FINDING at input {result.inputs}: {exc}")
                log(f"live:   input kept as {relative}")
                if path:
                    log(f"live:   replay: ./.venv/bin/python -m fuzz --mode live --replay {relative} --repeat 30")
                if stop_at_first:
                    break
                result.extension_cpu_s += (procstat.cpu_seconds(fuzzer.pid) or 0) - (cpu_start or 0)
                fuzzer.restart_extension()
                result.restarts += 1
                fuzzer.heavy_check(result)
                cpu_start = procstat.cpu_seconds(fuzzer.pid)
            previous = script
        if not result.findings or not stop_at_first:
            try:
                fuzzer.heavy_check(result)
            except LiveFinding as exc:
                result.findings.append(("(final check)", str(exc)))
            result.rss_kb.append(result.last_rss_fds[0])
            result.fds.append(result.last_rss_fds[1])
        result.extension_cpu_s += (procstat.cpu_seconds(fuzzer.pid) or 0) - (cpu_start or 0)
    finally:
        result.seconds = time.monotonic() - started
        fuzzer.close()
    return result


def replay(paths: list[Path], log=print, repeat: int = 1, layer: Path = LAYER, db=None) -> list[tuple[str, str]]:
    """Run kept inputs (each file's scripts in order, `repeat` times: a race may need a few
    tries) against a fresh extension; the checks after each script and at the end must pass."""
    findings = []
    fuzzer = LiveFuzzer(log, layer, db)
    result = Campaign(0)
    try:
        fuzzer.start_database()
        fuzzer.start_extension()
        fuzzer.heavy_check(result)
        for path in paths:
            data = json.loads(path.read_text())
            scripts = data["inputs"] if "inputs" in data else [data]
            try:
                for _ in range(repeat):
                    for script in scripts:
                        fuzzer.one_input(script, result)
                fuzzer.heavy_check(result)
            except LiveFinding as exc:
                findings.append((str(path), str(exc)))
                fuzzer.restart_extension()
                fuzzer.heavy_check(result)
    finally:
        fuzzer.close()
    return findings


def report(result: Campaign, log=print) -> None:
    rate = result.inputs / result.seconds if result.seconds else 0
    log(f"live: seed {result.seed}, {result.inputs} inputs in {result.seconds:.0f} s ({rate:.1f} inputs/s), "
        f"{result.checks} full checks, {result.restarts} extension restart(s), {len(result.findings)} finding(s)")
    if result.rss_kb:
        log(f"live: extension RSS {result.rss_kb[0] / 1024:.1f} MB -> {result.rss_kb[-1] / 1024:.1f} MB, "
            f"open fds {result.fds[0]} -> {result.fds[-1]}; most CPU one input cost: "
            f"{result.slowest_input_cpu_s * 1000:.0f} ms; extension CPU in all: {result.extension_cpu_s:.1f} s")
    for path, message in result.findings:
        log(f"FINDING {path}: {message}")
