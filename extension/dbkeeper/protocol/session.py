"""The session model: what a client's session holds on the server, as far as dbkeeper can know it,
and whether the session can move to another upstream connection right now. No I/O.

A session lives in dbkeeper; the upstream connection under it may change (it died while the
client was idle, or another client needs it: connection sharing). A move is allowed only when
everything the session holds can be rebuilt on a fresh connection by replaying it:

- replayed: the database (handshake, COM_INIT_DB, USE), the system variables the session set
  (reported by the server's `session_track_system_variables='*'` tracker with their values), and
  LAST_INSERT_ID() (from OK packets);
- pinned for the session's life (until COM_RESET_CONNECTION / COM_CHANGE_USER), because no
  replay can rebuild them: user variables, temporary tables, prepared statements (binary or
  SQL), named locks (GET_LOCK), LOCK TABLES, a pending SQL_CALC_FOUND_ROWS, stored programs
  (CALL), HANDLER, XA, SET TRANSACTION (the next transaction's characteristics), multi-statement
  queries, replies dbkeeper could not follow, and any state change the server reports that is
  not one of the replayable ones;
- pinned for now: an open transaction (SERVER_STATUS_IN_TRANS in the last reply), and warnings or
  an error left by the last statement (SHOW WARNINGS / SHOW ERRORS must see them).

Two sources, because neither is enough alone (measured on MariaDB 10.11): the trackers report a
change only in OK packets, so a SELECT that sets a user variable (`SELECT @a := 1`) or takes a
named lock (`SELECT GET_LOCK(..)`) is visible only in the statement's text; and a text test
cannot see what a stored function or a procedure did, which the state-change tracker reports.
A statement is pinned on its text before it runs (a failed one pins too: cheap and safe).

Not kept across a move (README: "What a moved session can observe"): CONNECTION_ID() (a new
connection), ROW_COUNT() and FOUND_ROWS() of the statement before the move.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

from pymysql.constants import COMMAND, SERVER_STATUS

from ..errors import ProtocolError
from .messages import OK_HEADER, SERVER_SESSION_STATE_CHANGED
from .packets import HEADER_SIZE, lenenc_int, read_lenenc_bytes, read_lenenc_int
from .responses import STATE_CHANGED, WARNED

# Session state tracking (CLIENT_SESSION_TRACK): the entry types of the block an OK packet
# carries after its info string (MySQL's SESSION_TRACK_* / MariaDB's the same).
SESSION_TRACK_SYSTEM_VARIABLES = 0
SESSION_TRACK_SCHEMA = 1
SESSION_TRACK_STATE_CHANGE = 2
_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS

# What dbkeeper asks every upstream session to track (sent after each reset; the reset itself
# returns every session variable to its global value).
TRACKING_STATEMENT = (b"SET SESSION session_track_system_variables = '*', session_track_schema = ON, "
                      b"session_track_state_change = ON")
# Variables dbkeeper sets itself: never replayed from what the tracker reports.
_OWN_VARIABLES = frozenset((b"session_track_system_variables", b"session_track_schema",
                            b"session_track_state_change", b"session_track_transaction_info"))


class Pin(Enum):
    TRANSACTION = "transaction"
    WARNINGS = "warnings"
    ROW_COUNT = "row_count"
    LOCK_TABLES = "lock_tables"
    USER_LOCK = "user_lock"
    TEMPORARY_TABLE = "temporary_table"
    USER_VARIABLE = "user_variable"
    PREPARED_STATEMENT = "prepared_statement"
    FOUND_ROWS = "found_rows"
    STORED_PROGRAM = "stored_program"
    HANDLER = "handler"
    XA = "xa"
    TRANSACTION_CHARACTERISTICS = "transaction_characteristics"
    LAST_INSERT_ID = "last_insert_id"
    MULTI_STATEMENT = "multi_statement"
    STATE_CHANGE = "state_change"
    UNFOLLOWED = "unfollowed"
    UNTRACKED = "untracked"  # the server does not track session state: nothing can be replayed


# Pins that end by themselves (the last reply tells)
TRANSIENT = frozenset((Pin.TRANSACTION, Pin.WARNINGS, Pin.ROW_COUNT))
# Pins that a later statement ends: UNLOCK TABLES; a SELECT that asks FOUND_ROWS() (or any other
# SELECT: it replaces the count). Every other pin lasts for the session.
RELEASABLE = frozenset((Pin.LOCK_TABLES, Pin.FOUND_ROWS, Pin.WARNINGS))
# What only describes the statement before (SHOW WARNINGS, ROW_COUNT(), FOUND_ROWS()): it holds a
# session on a live connection, but not when that connection died: the session goes on without
# them (a direct connection would have lost everything) rather than fail.
OBSERVABLES = frozenset((Pin.WARNINGS, Pin.ROW_COUNT, Pin.FOUND_ROWS))
# A statement that always uses a table: its clean reply empties the warnings list (MariaDB keeps
# the last statement's warnings through statements that use no table: SELECT 1, SET, COMMIT)
_USES_TABLE = re.compile(r"\s*(?:(?:INSERT|UPDATE|DELETE|REPLACE)\b|SELECT\b.*?\bFROM\s+(?!DUAL\b)[`\w])", re.S)
_UNLOCK_TABLES = re.compile(r"\s*UNLOCK\s+TABLES?\b")
_SELECT = re.compile(r"\s*\(?\s*SELECT\b")

# Statement text that holds state no replay can rebuild: (a word that must be in the upper-cased
# text, the pin, the exact test run only when the word is there, whether that test is anchored at
# the statement's start). The text is decoded as latin-1 (one character per byte, so ASCII words
# are found in any character set). A word test, not a parser: string literals can pin a session
# needlessly (an '@' in an e-mail address), which costs sharing, never correctness. The substring
# tests run in C and keep the cost for an ordinary query well under a microsecond.
_TEXT_PINS: tuple[tuple[str, Pin, re.Pattern[str], bool], ...] = (
    ("@", Pin.USER_VARIABLE, re.compile(r"(?<!@)@(?!@)"), False),
    ("LOCK", Pin.USER_LOCK, re.compile(r"\bGET_LOCK\b"), False),
    ("LOCK", Pin.LOCK_TABLES, re.compile(r"\bLOCK\s+TABLES?\b|\bWITH\s+READ\s+LOCK\b|\bBACKUP\s+(?:LOCK|STAGE)\b"),
     False),
    ("TEMPORARY", Pin.TEMPORARY_TABLE, re.compile(r"\bTEMPORARY\b"), False),
    ("PREPARE", Pin.PREPARED_STATEMENT, re.compile(r"\bPREPARE\b"), False),
    ("SQL_CALC_FOUND_ROWS", Pin.FOUND_ROWS, re.compile(r"\bSQL_CALC_FOUND_ROWS\b"), False),
    ("CALL", Pin.STORED_PROGRAM, re.compile(r"\s*CALL\b"), True),
    ("HANDLER", Pin.HANDLER, re.compile(r"\s*HANDLER\b"), True),
    ("XA", Pin.XA, re.compile(r"\s*XA\b"), True),
    ("TRANSACTION", Pin.TRANSACTION_CHARACTERISTICS, re.compile(r"\bSET\s+TRANSACTION\b"), False),
    ("LAST_INSERT_ID", Pin.LAST_INSERT_ID, re.compile(r"\bLAST_INSERT_ID\s*\(\s*[^\s)]"), False),
)
# A ';' with more text after it: a multi-statement query (CLIENT_MULTI_STATEMENTS)
_MORE_STATEMENTS = re.compile(r";\s*\S")

def _has_words(text: str) -> bool:
    # nearly every statement has none of the words: one expression of substring tests in C,
    # no loop, decides that (the exact patterns run only when a word is there)
    return "@" in text or "LOCK" in text or "TEMPORARY" in text or "PREPARE" in text \
        or "SQL_CALC" in text or "CALL" in text or "HANDLER" in text or "XA" in text \
        or "TRANSACTION" in text or "LAST_INSERT_ID" in text or ";" in text


# --- a statement in a few bits, for the relay's fast path ---------------------------------------
# A relayed query costs the relay a few microseconds; reading its text is most of that. Most
# sessions send the same few statements again and again (SELECT 1, COMMIT, the ORM's queries), so
# what the text says is worked out once per distinct packet and remembered.
Q_WORDS = 1        # a word of _TEXT_PINS or a ';': the session model must read the text (query_upper)
Q_READS_WAIT = 2   # may read the session's wait_timeout ("TIMEOUT", "VARIABLES")
Q_USES_TABLE = 4   # surely uses a table: with autocommit off it opens a transaction
Q_BEGINS = 8       # BEGIN / START TRANSACTION
Q_ENDS = 16        # COMMIT / ROLLBACK (without CHAIN or a savepoint): the transaction ends
Q_NOT_QUERY = 32   # not a COM_QUERY (set by the relay): the session model must see the command
_BEGINS = re.compile(r"\s*(?:BEGIN\b|START\s+TRANSACTION\b)")
# (one `\s*` before the end, never two in a row: `\s*;?\s*\Z` backtracks quadratically on spaces)
_ENDS = re.compile(r"\s*(?:COMMIT|ROLLBACK)(?:\s+WORK)?\s*(?:;\s*)?\Z")
# whole COM_QUERY packets (header included) -> their Q_* flags; bounded: at most this many, this long
QUERY_FLAGS: dict[bytes, int] = {}
_FLAGS_KEPT = 256
FLAGS_LONGEST = 512


def query_flags(packet: bytes) -> int:
    """The Q_* flags of a whole COM_QUERY packet (its command byte at packets.HEADER_SIZE), kept
    in QUERY_FLAGS for the next time (short packets only: the memory stays bounded)."""
    text = packet[HEADER_SIZE + 1:].decode("latin-1").upper()
    flags = Q_WORDS if _has_words(text) else 0
    if "TIMEOUT" in text or "VARIABLES" in text:
        flags |= Q_READS_WAIT
    if _USES_TABLE.match(text):
        flags |= Q_USES_TABLE
    elif _BEGINS.match(text):
        flags |= Q_BEGINS
    elif _ENDS.match(text):
        flags |= Q_ENDS
    if len(packet) <= FLAGS_LONGEST:
        if len(QUERY_FLAGS) >= _FLAGS_KEPT:
            QUERY_FLAGS.clear()
        QUERY_FLAGS[packet] = flags
    return flags


_PIN_COMMANDS = {
    COMMAND.COM_STMT_PREPARE: Pin.PREPARED_STATEMENT,
    COMMAND.COM_STMT_EXECUTE: Pin.PREPARED_STATEMENT,
    COMMAND.COM_STMT_SEND_LONG_DATA: Pin.PREPARED_STATEMENT,
}
# Commands whose effect on the session is nothing, or what the trackers report.
_NEUTRAL_COMMANDS = frozenset((
    COMMAND.COM_QUERY, COMMAND.COM_INIT_DB, COMMAND.COM_PING, COMMAND.COM_STATISTICS,
    COMMAND.COM_FIELD_LIST, COMMAND.COM_PROCESS_INFO, COMMAND.COM_PROCESS_KILL, COMMAND.COM_STMT_CLOSE,
    COMMAND.COM_STMT_RESET, COMMAND.COM_SLEEP, COMMAND.COM_SET_OPTION, COMMAND.COM_CREATE_DB,
    COMMAND.COM_DROP_DB, COMMAND.COM_REFRESH, COMMAND.COM_DEBUG,
))


class OkPacket(NamedTuple):
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: bytes
    changes: list[tuple[int, bytes]]  # (SESSION_TRACK_* type, entry data)
    state_at: int                     # where the info string starts (what an untracked client gets)


def parse_ok(payload: bytes) -> OkPacket:
    """An OK packet of a session that negotiated CLIENT_SESSION_TRACK (MariaDB sends the info
    string length-encoded either way). ProtocolError if it is malformed."""
    affected, position = read_lenenc_int(payload, 1)
    insert_id, position = read_lenenc_int(payload, position)
    if position + 4 > len(payload):
        raise ProtocolError("truncated OK packet")
    status = payload[position] | payload[position + 1] << 8
    warnings = payload[position + 2] | payload[position + 3] << 8
    position += 4
    info_at = position
    info = b""
    changes: list[tuple[int, bytes]] = []
    if position < len(payload):
        info, position = read_lenenc_bytes(payload, position)
        if status & SERVER_SESSION_STATE_CHANGED and position < len(payload):
            block, _ = read_lenenc_bytes(payload, position)
            entry = 0
            while entry < len(block):
                kind = block[entry]
                data, entry = read_lenenc_bytes(block, entry + 1)
                changes.append((kind, data))
    return OkPacket(affected or 0, insert_id or 0, status, warnings, info, changes, info_at)


def tracked_variable(payload: bytes, name: bytes) -> bytes | None:
    """The value an OK packet's tracker data reports for system variable `name`, or None (not
    reported, or the packet is malformed)."""
    try:
        for kind, data in parse_ok(payload).changes:
            if kind == SESSION_TRACK_SYSTEM_VARIABLES:
                entry, position = read_lenenc_bytes(data, 0)
                if entry == name:
                    return read_lenenc_bytes(data, position)[0]
    except ProtocolError:
        return None
    return None


def untracked_ok(ok: OkPacket, payload: bytes) -> bytes:
    """The OK packet a client that did not ask for session tracking gets for the same statement:
    no state block, no SERVER_SESSION_STATE_CHANGED, the info string as MariaDB sends it then
    (length-encoded, nothing at all when empty)."""
    head = payload[:ok.state_at - 4]
    status = ok.status & ~SERVER_SESSION_STATE_CHANGED
    info = lenenc_int(len(ok.info)) + ok.info if ok.info else b""
    return head + status.to_bytes(2, "little") + ok.warnings.to_bytes(2, "little") + info


class Ending(NamedTuple):
    """How the last reply ended: its final OK/EOF's status and warnings, or an ERR; the OK's
    affected rows (ROW_COUNT()), None for a result set or an ERR."""
    status: int
    warnings: int
    error: bool
    affected_rows: int | None = None


class SessionModel:
    """One client session's state, fed by the relay. `tracked`: the upstream connections report
    session state changes (the server offered CLIENT_SESSION_TRACK and accepted the trackers)."""

    def __init__(self, database: str | None, multi_statements: bool, tracked: bool) -> None:
        self.database = database
        self.multi_statements = multi_statements
        self.variables: dict[bytes, bytes] = {}
        self.last_insert_id = 0
        self.pins: set[Pin] = set() if tracked else {Pin.UNTRACKED}
        self.uses_table = False  # the last statement sent surely used a table (asked only while warnings pin)

    # --- fed by the relay ---------------------------------------------------------------------
    def command(self, packet: bytes, start: int = 0) -> list[Pin]:
        """A command the client sent: `packet[start]` is its command byte (the rest of the
        packet, or of what has arrived of it, follows). Returns the pins it adds (for the log
        and the metrics; usually none)."""
        code = packet[start] if len(packet) > start else COMMAND.COM_SLEEP
        if code == COMMAND.COM_QUERY:
            return self.query(packet, start)
        self.uses_table = False
        pin = _PIN_COMMANDS.get(code)
        if pin is not None:
            return self._pin(pin)
        if code in _NEUTRAL_COMMANDS:
            return []
        return self._pin(Pin.UNFOLLOWED)

    def query(self, packet: bytes, start: int = 0) -> list[Pin]:
        """A COM_QUERY whose command byte is `packet[start]`."""
        # as str: `in` on str runs in C, on bytes with a bytes needle it costs an exception inside
        return self.query_upper(packet.decode("latin-1").upper(), start)

    def query_upper(self, text: str, start: int) -> list[Pin]:
        """The same, given the packet decoded as latin-1 and upper-cased."""
        pins = self.pins
        self.uses_table = False
        if pins and not pins <= RELEASABLE:  # pinned for the session's life: its text changes nothing
            return []
        if pins:
            # only a pending warnings list needs to know (saves a pattern per query otherwise)
            self.uses_table = Pin.WARNINGS in pins and _USES_TABLE.match(text, start + 1) is not None
            if Pin.LOCK_TABLES in pins and _UNLOCK_TABLES.match(text, start + 1):
                pins.discard(Pin.LOCK_TABLES)
            if Pin.FOUND_ROWS in pins and _SELECT.match(text, start + 1) and "SQL_CALC_FOUND_ROWS" not in text:
                pins.discard(Pin.FOUND_ROWS)
        return self._classify(text, start + 1, anchored=True)

    def query_text(self, text: str) -> list[Pin]:
        """More text of a long query that arrived in several reads (no statement start in it)."""
        if self.pins and not self.pins <= RELEASABLE:
            return []
        return self._classify(text.upper(), 0, anchored=False)

    def _classify(self, text: str, start: int, anchored: bool) -> list[Pin]:
        if not _has_words(text):
            return []
        new: list[Pin] = []
        for word, pin, exact, at_start in _TEXT_PINS:
            if word in text and pin not in self.pins and (anchored or not at_start) \
                    and (exact.match(text, start) if at_start else exact.search(text, start)) is not None:
                new += self._pin(pin)
        if self.multi_statements and ";" in text and _MORE_STATEMENTS.search(text, start):
            new += self._pin(Pin.MULTI_STATEMENT)
        return new

    def ok(self, ok: OkPacket) -> list[Pin]:
        """An OK packet the server sent for this session (one whose tracker data dbkeeper read)."""
        if ok.last_insert_id:
            self.last_insert_id = ok.last_insert_id
        if not ok.changes:
            return []
        replayable = False
        changed = False
        for kind, data in ok.changes:
            if kind == SESSION_TRACK_SYSTEM_VARIABLES:
                name, position = read_lenenc_bytes(data, 0)
                value, _ = read_lenenc_bytes(data, position)
                if name not in _OWN_VARIABLES:
                    self.variables.pop(name, None)  # the latest change goes last when replayed
                    self.variables[name] = value
                replayable = True
            elif kind == SESSION_TRACK_SCHEMA:
                self.database = read_lenenc_bytes(data, 0)[0].decode("utf-8", "replace") if data else None
                replayable = True
            elif kind == SESSION_TRACK_STATE_CHANGE:
                changed = True
        # The state-change entry comes with every tracked change; alone, it reports one no
        # replay can rebuild (a temporary table, a user variable set in a procedure, ...).
        if changed and not replayable:
            return self._pin(Pin.STATE_CHANGE)
        return []

    def reply_ended(self, marks: int) -> list[Pin]:
        """A reply ended (the relay proved it); `marks` (responses.WARNED, STATE_CHANGED): it left
        warnings or an error, which stay on the server until a statement that uses a table ends
        cleanly; its final EOF reports a state change no OK carried (a stored function's)."""
        new = self._pin(Pin.STATE_CHANGE) if marks & STATE_CHANGED else []
        if marks & WARNED:
            return new + self._pin(Pin.WARNINGS)
        if self.uses_table:
            self.pins.discard(Pin.WARNINGS)
        return new

    def unfollowed(self) -> list[Pin]:
        """Replies dbkeeper relayed without reading their tracker data (pipelined commands, an OK
        split across reads): whatever they reported is unknown."""
        return self._pin(Pin.UNFOLLOWED)

    def _pin(self, pin: Pin) -> list[Pin]:
        if pin in self.pins:
            return []
        self.pins.add(pin)
        return [pin]

    @property
    def sets_own_wait_timeout(self) -> bool:
        """The session set its wait_timeout itself: it is the session's to keep (and replay)."""
        return b"wait_timeout" in self.variables or b"interactive_timeout" in self.variables

    # --- decisions ----------------------------------------------------------------------------
    def blockers(self, ending: Ending | None, connection_lost: bool = False) -> set[Pin]:
        """Why the session cannot move now that its last reply ended as `ending` (empty: it can).
        `connection_lost`: its connection died, so what only describes the last statement is no
        reason to fail the session."""
        blockers = self._blockers(ending)
        return blockers - OBSERVABLES if connection_lost else blockers

    def _blockers(self, ending: Ending | None) -> set[Pin]:
        if ending is None:
            return set(self.pins)
        pins = self.pins
        if Pin.WARNINGS in pins and self.uses_table and not (ending.warnings or ending.error):
            pins = pins - {Pin.WARNINGS}  # the latest statement emptied the list
        transient = set()
        if ending.status & _IN_TRANS:
            transient.add(Pin.TRANSACTION)
        if ending.warnings or ending.error:
            transient.add(Pin.WARNINGS)
        if ending.status & SERVER_SESSION_STATE_CHANGED and ending.affected_rows is None:
            transient.add(Pin.STATE_CHANGE)  # an EOF's: what changed is not known
        if ending.affected_rows:  # ROW_COUNT() > 0: no replay can make it so
            transient.add(Pin.ROW_COUNT)
        return pins | transient

    def replay(self, handshake_database: str | None, observed: tuple[int, int] | None = None) -> list[bytes]:
        """Command payloads that rebuild this session on a connection prepared for its handshake
        settings (character set, database, multi-statement option). `observed`: ROW_COUNT() and
        FOUND_ROWS() read on the old connection before it was reset, made so again last."""
        commands = []
        if self.database and self.database != handshake_database:
            commands.append(bytes((COMMAND.COM_INIT_DB,)) + self.database.encode())
        if self.variables:
            # character sets first: setting one resets its collation, set after it
            ordered = sorted(self.variables.items(), key=lambda item: not item[0].startswith(b"character_set"))
            assignments = b", ".join(name + b" = " + _literal(name, value) for name, value in ordered)
            commands.append(bytes((COMMAND.COM_QUERY,)) + b"SET SESSION " + assignments)
        if self.last_insert_id:
            commands.append(bytes((COMMAND.COM_QUERY,)) + b"DO LAST_INSERT_ID(%d)" % self.last_insert_id)
        if observed is not None and observed[1] <= MOST_FOUND_ROWS:
            row_count, found_rows = observed
            commands.append(bytes((COMMAND.COM_QUERY,)) + found_rows_statement(found_rows))
            if row_count == 0:  # the SELECT leaves -1; a statement without a result, 0
                commands.append(bytes((COMMAND.COM_QUERY,)) + b"DO 0")
        return commands


# Most FOUND_ROWS() a replay makes so (one step of a recursive CTE per row)
MOST_FOUND_ROWS = 100_000
# What the replay reads back from the old connection before its reset (connection sharing)
OBSERVE_STATEMENT = b"SELECT ROW_COUNT(), FOUND_ROWS()"


def found_rows_statement(found_rows: int) -> bytes:
    """A SELECT after which FOUND_ROWS() is `found_rows` and ROW_COUNT() -1, returning no row."""
    if found_rows <= 0:
        return b"SELECT 1 FROM DUAL WHERE 0"
    return (b"WITH RECURSIVE dbkeeper_rows(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM dbkeeper_rows WHERE n < %d) "
            b"SELECT SQL_CALC_FOUND_ROWS n FROM dbkeeper_rows LIMIT 0" % found_rows)


_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?\Z")
# Variables whose empty value in the tracker means NULL (SET ... = NULL is reported as "")
_NULLABLE = frozenset((b"character_set_results",))


def _literal(name: bytes, value: bytes) -> bytes:
    if _NUMBER.match(value):
        return value
    if not value and name in _NULLABLE:
        return b"NULL"
    return b"'" + value.replace(b"\\", b"\\\\").replace(b"'", b"''") + b"'"


def ending_of(packet: bytes) -> Ending | None:
    """The Ending of a reply whose final packet's payload is `packet` (OK, EOF or ERR)."""
    if not packet:
        return None
    first = packet[0]
    if first == 0xFF:
        return Ending(0, 0, True)
    if first == 0xFE and len(packet) < 9:
        if len(packet) < 5:
            return None
        return Ending(packet[3] | packet[4] << 8, packet[1] | packet[2] << 8, False)
    if first == OK_HEADER:  # `packet` may be only the head of a long OK: read up to the warnings
        try:
            affected, position = read_lenenc_int(packet, 1)
            _, position = read_lenenc_int(packet, position)
        except ProtocolError:
            return None
        if position + 4 > len(packet):
            return None
        return Ending(packet[position] | packet[position + 1] << 8,
                      packet[position + 2] | packet[position + 3] << 8, False, affected or 0)
    return None
