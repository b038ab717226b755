"""The hot path: bytes between one client session and its upstream connection.

Chunks are forwarded as received (no per-row work, no copies). Commands are seen from the
client's side, which is cheap. Replies are only walked packet by packet when needed: a client
that sends its next command has read the previous reply, and if the bytes relayed end with a
closing EOF, OK or ERR that is proof enough; otherwise (pipelining clients, unusual replies, the
end of a session) the saved chunks are fed to the ResponseTracker, which knows exactly where
replies end.

A session's leading setup statements (protocol/session_setup.py) that this server has accepted
before are answered here and held, then written in front of the first command that goes
upstream; their replies are dropped from the upstream stream before anything reaches the client.

The session model (protocol/session.py) sees every command the client sends and every OK packet
that starts a reply (the only replies that carry the server's session-tracking data), so that
the session can move to another upstream connection when it is idle. Upstream connections track
session state; the client never asked for that, so an OK reporting a change is rewritten to the
packet an untracked session gets (the only reply bytes the relay ever changes).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pymysql.constants import COMMAND, SERVER_STATUS

from .errors import ProtocolError
from .protocol import session_setup
from .protocol.commands import FILE_DATA, FILE_END, INTERCEPTED, NO_REPLY, CommandScanner
from .protocol.messages import OK_HEADER, SERVER_SESSION_STATE_CHANGED
from .protocol.packets import HEADER_SIZE, MAX_FRAME, frame
from .protocol.responses import (
    ERRED,
    MARKS,
    UNCLOSED,
    WHOLE_OK,
    ResponseTracker,
    ends_with_eof,
    reply_end,
    reply_marks,
)
from .protocol.session import (
    FLAGS_LONGEST,
    OBSERVABLES,
    Q_BEGINS,
    Q_ENDS,
    Q_NOT_QUERY,
    Q_READS_WAIT,
    Q_USES_TABLE,
    Q_WORDS,
    QUERY_FLAGS,
    RELEASABLE,
    Ending,
    Pin,
    SessionModel,
    ending_of,
    parse_ok,
    query_flags,
    untracked_ok,
)

_UNFED_LIMIT = 4 << 20  # walk saved reply bytes once this many pile up, to bound memory
# Commands the fast path may pass without the scanner: one reply each, nothing to bookkeep.
_NOT_FAST = INTERCEPTED | NO_REPLY | {COMMAND.COM_SET_OPTION}
# SERVER_SESSION_STATE_CHANGED in the high byte of an OK's status
_STATE_CHANGED_HIGH = SERVER_SESSION_STATE_CHANGED >> 8
_QUERY_OVERLAP = 64  # text kept from one piece of a long query to test words split between reads
_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
_COM_QUERY = COMMAND.COM_QUERY
_AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
_FOLLOW_WAIT_BITS = _IN_TRANS | SERVER_SESSION_STATE_CHANGED
_ATTENTION = _FOLLOW_WAIT_BITS | ERRED

if TYPE_CHECKING:
    import asyncio

    from .pool import Demand


class RelayClient(Protocol):
    """The client side of a relayed session (client.ClientConnection)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def set_reading(self, reading: bool) -> None: ...

    def setup_failed(self, reply: bytes) -> None: ...

    def upstream_lost(self) -> None: ...

    def session_pinned(self, pins: list[Pin]) -> None: ...


class RelayUpstream(Protocol):
    """The upstream side of a relayed session (upstream.UpstreamConnection)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def status(self) -> int: ...

    @property
    def tracked(self) -> bool: ...

    @property
    def short_wait(self) -> bool: ...

    def wait_command(self, short: bool) -> bytes: ...

    def forget_options(self) -> None: ...


def enable_nodelay(sock: socket.socket | None) -> None:
    """Small request/response packets must not wait for Nagle + delayed ACK (a 40 ms stall per
    large result). For the upstream connection; accepted clients inherit it from the listening
    socket (listeners.py). `sock` is a transport's socket (get_extra_info("socket")), or None."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _discard(data: bytes) -> None:
    pass


class _Nobody:
    """No pool's borrowers to tell (a relay without a pool: tests, the fuzzer)."""
    waiting = 0

    def reply_ended(self) -> None:
        """Never called: nobody is ever waiting."""


_NOBODY = _Nobody()


class Relay:
    # Slots: attribute reads are most of the hot path's work, and a class of more than 30 instance
    # attributes loses CPython's fast instance-attribute access (measured: +14 % instructions per query)
    __slots__ = ("client", "upstream", "scanner", "tracker", "commands", "session", "_expected", "_older",
                 "_older_size", "_last", "_end", "_ready", "_simple", "_client_write", "_upstream_write", "_proven",
                 "_held", "_own_held", "_sent_held", "_status", "_candidate", "_swallow", "_swallowed", "_tracked",
                 "_watch", "_ended", "_query_tail", "_demand", "_follow_wait", "_own", "_reply_status", "_predict",
                 "_predicted", "_pins", "_unsettled", "_closing")

    def __init__(self, client: RelayClient, upstream: RelayUpstream, proven: session_setup.ProvenSetup | None = None,
                 prefix: bytes | None = None, session: SessionModel | None = None,
                 carried: tuple[list[bytes], int] | None = None, demand: Demand | None = None,
                 follow_wait: bool = False) -> None:
        """`session`: the client's session model, fed here (None: not followed). `carried`: setup
        statements already answered to the client but not yet run, and the status it was told,
        from the relay of the session's previous upstream connection (a move). `demand`: the
        pool's borrowers waiting for a session to give its connection up. `follow_wait`: the
        connection's session wait_timeout follows the session: short (as in the pool) while it
        could move, the server's own while it could not (see "the session wait_timeout follows the session" below)."""
        self.client = client
        self.upstream = upstream
        self.scanner = CommandScanner()
        self.tracker = ResponseTracker()
        self._expected: list[int] = []  # commands relayed since the tracker last saw replies
        self._older: list[bytes] = []   # reply chunks relayed since then, but the last one
        self._older_size = 0
        self._last: bytes | None = None  # the last reply chunk relayed since then
        self._end = UNCLOSED  # reply_end(self._last), worked out as it arrived
        # the fast path may send a command: no command awaits a reply, or the one that did has it
        # whole (no reply bytes since the tracker last saw them, or _end says they close it)
        self._ready = True
        # what reply_end() must be below for _ready: UNCLOSED while one command awaits its reply;
        # -1 (never) while none does (bytes nobody asked for: the tracker must see them)
        self._closing = -1
        # The fast path's precondition: the client is between packets, the tracker holds no
        # unfinished reply, at most one command awaits its reply, and no session-setup statement is
        # held or waits for proof (set below, once _held is). After an idle wait the
        # memory a path touches costs more than the instructions it runs, so the fast path
        # reads only this flag, the chunk it forwards and the last reply chunk.
        client_transport, upstream_transport = client.transport, upstream.transport
        assert client_transport is not None and upstream_transport is not None  # a relay joins two open connections
        self._client_write: Callable[[bytes], None] = client_transport.write
        self._upstream_write: Callable[[bytes], None] = upstream_transport.write
        self.commands = 0
        # Session setup: statements answered here, not yet sent (None once a command went upstream)
        self._proven = proven
        # `prefix`: a command of dbkeeper's own that must run before the session's first one (its
        # reply dropped like a held statement's): restoring the server's wait_timeout
        self._held: list[bytes] | None = [prefix] if prefix else [] if proven is not None else None
        self._own_held = 1 if prefix else 0  # leading held commands that are dbkeeper's, not the session's
        self._sent_held: list[bytes] = []
        self._status = upstream.status if proven is not None else 0  # for the OKs given here
        if carried is not None and self._held is not None:
            self._held += carried[0]
            self._status = carried[1]
        self._candidate: bytes | None = None  # a setup statement sent unproven: its reply may prove it
        self._simple = self._held is None
        self._swallow = 0                    # replies to held statements still to drop upstream-side
        self._swallowed = b""                # the start of the next one of them
        # --- the session model
        self.session = session
        self._tracked = session is not None and upstream.tracked
        self._watch = session is not None and not session.pins - RELEASABLE  # commands can still pin it
        self._ended: bytes | None = None  # the last chunk of the latest reply the fast path proved ended
        self._query_tail: str | None = None  # a long query's text so far continues in the next read
        self._demand: Demand | _Nobody = demand if demand is not None else _NOBODY
        self._follow_wait = follow_wait and self._tracked
        self._own = 0  # of the replies to drop (_swallow), the last ones answer dbkeeper's own statements
        self._reply_status = upstream.status  # of the latest reply that ended with a status
        self._predict = True      # guess that a statement opens a transaction (see _wait_before)
        self._predicted = False   # the command under way was guessed to
        # for the per-reply test: a guess to check, or the connection is on the server's wait_timeout
        self._unsettled = self._follow_wait and not upstream.short_wait
        # the session's pins (the model changes the set in place; none without a model)
        self._pins: set[Pin] | frozenset[Pin] = session.pins if session is not None else frozenset()

    def client_data(self, data: bytes) -> bytes | None:
        """Forward what the client sent; return the bytes of an intercepted command, if any."""
        # The shape of nearly every query: one whole command (sequence id 0) after a whole reply.
        # A statement seen before is found whole in QUERY_FLAGS (the header checks below are
        # what put it there), which also says what its text means to the session model.
        if self._simple:
            size = len(data)
            flags = QUERY_FLAGS.get(data) if size <= FLAGS_LONGEST and self._watch else None
            if flags is not None:
                code = _COM_QUERY
            elif size > 4 and (data[0] | data[1] << 8 | data[2] << 16) == size - 4 < MAX_FRAME \
                    and data[3] == 0 and data[4] not in _NOT_FAST:
                code = data[4]
                flags = Q_NOT_QUERY if code != _COM_QUERY else query_flags(data) if self._watch else 0
            else:
                return self._forward(data)
            if self._ready:
                last = self._last
                if last is None:
                    ended = 0
                else:
                    self._ended = last
                    ended = self._end
                if self._watch and (flags or self._pins or ended & MARKS):
                    self._watched(data, flags, ended if last is not None else UNCLOSED)
                else:
                    self._upstream_write(data)
                self._expected = [code]
                if self._older:
                    self._older.clear()
                    self._older_size = 0
                self._last = None
                self._ready = False
                self._closing = UNCLOSED
                self.commands += 1
                return None
        if self._candidate is not None:
            self._prove_candidate()
        if self._held is not None and self._answered_setup(data):
            return None
        return self._forward(data)

    def _forward(self, data: bytes) -> bytes | None:
        at_boundary = self.scanner.at_boundary
        forward, commands, rest = self.scanner.feed(data)
        if commands:
            self._on_commands(commands)
        if self._watch:
            self._follow(forward, commands)
            # dbkeeper's own statement may go in front only of one whole command that starts these
            # bytes (never inside a command or a LOCAL INFILE's data), after every earlier reply
            # ended (its reply is read off the front of what comes back)
            if self._follow_wait and at_boundary and self.scanner.first_start == 0 and len(commands) == 1 \
                    and commands[0] >= 0 and self.tracker.idle and len(self._expected) == 1:
                flags = query_flags(forward) if commands[0] == _COM_QUERY and self.scanner.at_boundary \
                    else Q_NOT_QUERY
                own = self._wait_before(flags)
                if own:
                    forward = own + forward
        if forward:
            self._upstream_write(forward)
        self._simple = self.tracker.idle and self.scanner.at_boundary and len(self._expected) <= 1 \
            and self._held is None and self._candidate is None
        self._ready = not self._expected and self._last is None
        self._closing = UNCLOSED if len(self._expected) == 1 else -1
        return rest

    # --- the session model ----------------------------------------------------------------------
    def _note(self, pins: list[Pin]) -> None:
        if pins:
            assert self.session is not None  # pins come from it
            self._watch = not self.session.pins - RELEASABLE
            self.client.session_pinned(pins)

    # --- the session wait_timeout follows the session ---------------------------------------
    # A lent connection keeps the short wait_timeout of the pool while its session could move
    # (were it dropped while the client is idle, the session's next command gets another one): a
    # sandbox reclaimed without SHUTDOWN leaves it on the server that long, not 8 hours. A session
    # that could not move (an open transaction, a user variable, ...) gets the server's own
    # wait_timeout back before it idles, as a direct connection has it. dbkeeper's statement goes
    # in the same write as the client's next command, in front of it, where the change is known
    # then (_wait_before), else right after the reply that showed it (_wait_after_reply); its reply
    # is dropped like a held statement's.
    def _watched(self, data: bytes, flags: int, ended: int) -> None:
        """The fast path's command when the session model must hear of it: the end of the reply
        before (`ended`: its reply_end(), UNCLOSED if none), the command, dbkeeper's own wait_timeout
        statement in front of it if one is due."""
        session = self.session
        assert session is not None  # _watch is set only with a session
        if ended < UNCLOSED and (ended & MARKS or session.uses_table):
            self._note(session.reply_ended(reply_marks(ended)))
        own = self._wait_before(flags) if self._follow_wait else b""
        self._upstream_write(own + data if own else data)
        if flags & Q_NOT_QUERY:
            self._note(session.command(data, HEADER_SIZE))
        elif flags & Q_WORDS or session.pins:
            self._note(session.query_upper(data.decode("latin-1").upper(), HEADER_SIZE))
        else:
            session.uses_table = False

    def _wait_before(self, flags: int) -> bytes:
        """Before a command goes: dbkeeper's own wait_timeout statement to send in the same write,
        in front of it, or b"". In front, because the transitions are known then, and a statement
        written at a reply's end costs a write and a wake-up of its own (and with TLS, records):
        - the server's own wait_timeout before a statement that may read it, or that opens a
          transaction (BEGIN, or a table used with autocommit off; guessed: a wrong guess is set
          right after the reply, and stops the guessing until a transaction opens unguessed);
        - the short one before a COMMIT / ROLLBACK of a session that can move afterwards (a COMMIT
          that leaves a transaction open is set right after its reply)."""
        upstream = self.upstream
        guess = False
        if upstream.short_wait:
            if flags & Q_READS_WAIT:
                pass
            elif flags & Q_BEGINS or flags & Q_USES_TABLE and self._predict \
                    and not self._reply_status & (_AUTOCOMMIT | _IN_TRANS):
                guess = True
            else:
                return b""
            short = False
        elif flags & Q_ENDS and not self._pinned():
            short = True
        else:
            return b""
        if self._stop_following():
            return b""
        self._swallow += 1
        self._own += 1
        self._predicted = guess
        command = upstream.wait_command(short)
        self._unsettled = guess or not short
        return command

    def _pinned(self) -> bool:
        """Pinned by more than what only describes the last statement."""
        pins = self.session.pins  # type: ignore[union-attr]
        return bool(pins and pins - OBSERVABLES)

    def _wait_after_reply(self, ended: int) -> None:
        """A reply just ended (`ended`: reply_end() of its last chunk; for an ERR, the status it is
        taken to leave): the wait_timeout the session idles with must be right before the client
        can idle."""
        short = not (ended & _FOLLOW_WAIT_BITS or self._pinned())
        if self._predicted:
            self._predicted = False
            if short:
                self._predict = False  # a wrong guess: no more until a transaction opens unguessed
        if short != self.upstream.short_wait:
            if not short and ended & _IN_TRANS:
                self._predict = True
            if not self._stop_following() and self.settle():
                self._upstream_write(self.upstream.wait_command(short))
                self._swallow += 1
                self._own += 1
        self._unsettled = not self.upstream.short_wait
        if self._unsettled and not self._watch:
            # pinned for the session's life, on the server's wait_timeout: nothing left to follow
            self._follow_wait = self._unsettled = False

    def _stop_following(self) -> bool:
        """The session set its own wait_timeout: from now on it is the session's to keep."""
        session = self.session
        if session is not None and session.sets_own_wait_timeout:
            self._follow_wait = self._unsettled = False
            return True
        return False

    def leftover(self) -> tuple[int, bytes]:
        """At the end of a session (or before a reset): replies to dbkeeper's own statements still
        on their way, and the bytes of one already begun."""
        return self._own, self._swallowed if self._own else b""

    def _follow(self, forward: bytes, commands: list[int]) -> None:
        """The slow path's commands, for the session model: a query's text (also when it arrives
        in several reads), and whether replies can still be read one at a time."""
        session = self.session
        assert session is not None  # _watch is set only with a session
        real = [code for code in commands if code >= 0]
        tail = self._query_tail
        if tail is not None:  # the rest of a long query
            text = tail + forward.decode("latin-1")
            self._note(session.query_text(text))
            self._query_tail = None if self.scanner.at_boundary or real else text[-_QUERY_OVERLAP:]
        if not real:
            return
        if len(real) > 1 or not self.tracker.idle or len(self._expected) > 1:
            # pipelined: replies arrive back to back, and OKs in them are not read
            self._note(session.unfollowed())
            return
        start = self.scanner.first_start
        if start < 0:
            return
        self._note(session.command(forward, start + HEADER_SIZE))
        if real[0] == COMMAND.COM_QUERY and not self.scanner.at_boundary:
            self._query_tail = forward[-_QUERY_OVERLAP:].decode("latin-1")

    def _first_reply_packet(self, data: bytes) -> bytes:
        """The start of the reply to the one command outstanding. An OK there is the whole reply
        of a statement: its tracker data goes to the session model, and an OK reporting a change
        is rewritten to what an untracked session gets."""
        size = len(data)
        if (data[0] | data[1] << 8 | data[2] << 16) != size - HEADER_SIZE:
            # more results follow in this read, or the OK is split across reads: not read here
            if self._watch:
                self._note(self.session.unfollowed())  # type: ignore[union-attr]
            return data
        session = self.session
        assert session is not None  # _tracked is set only with a session
        if size >= 11 and data[5] < 0xFB and data[6] < 0xFB and not data[8] & _STATE_CHANGED_HIGH:
            if data[6]:
                session.last_insert_id = data[6]
            return data
        try:
            ok = parse_ok(data[HEADER_SIZE:])
        except ProtocolError:
            if self._watch:
                self._note(session.unfollowed())
            return data
        self._note(session.ok(ok))
        if ok.changes or ok.status & SERVER_SESSION_STATE_CHANGED:
            return frame(untracked_ok(ok, data[HEADER_SIZE:]), data[3])
        return data

    def ending(self) -> Ending | None:
        """How the latest reply ended (after settle()); None before any reply."""
        chunk = self._ended
        if chunk is None:
            return ending_of(self.tracker.final)
        if ends_with_eof(chunk):
            return ending_of(chunk[-5:])
        return ending_of(chunk[HEADER_SIZE:])

    def blockers(self, connection_lost: bool = False) -> set[Pin] | None:
        """Why the session cannot move to another upstream connection now (empty: it can);
        None: a command or reply is under way (or the session is not followed)."""
        if self.session is None or not self.settle():
            return None  # (replies to dbkeeper's own statements may still come: leftover() hands them on)
        return self.session.blockers(self.ending(), connection_lost)

    def carry(self) -> tuple[list[bytes], int]:
        """For the relay of the session's next upstream connection: setup statements answered to
        the client but not run yet, and the status it was told."""
        held = self._held[self._own_held:] if self._held else []
        return held, self._status

    # --- session setup --------------------------------------------------------------------------
    def _answered_setup(self, data: bytes) -> bool:
        """At the start of a session: answer a proven setup statement here and hold it. Otherwise
        the leading run is over: send what is held, in front of `data`."""
        size = len(data)
        if size > HEADER_SIZE and data[3] == 0 and (data[0] | data[1] << 8 | data[2] << 16) == size - HEADER_SIZE:
            command = data[HEADER_SIZE:]
            statement = self._proven.get(command) if self._proven is not None else None
            if statement is not None:
                reply, self._status = session_setup.answer(statement, self._status)
                assert self._held is not None  # client_data calls this only while statements are held
                self._held.append(data)
                self._client_write(frame(reply, 1))
                self.commands += 1
                return True
            if data[HEADER_SIZE] in INTERCEPTED:
                self._held = None  # a reset, a change of user or the end: what is held need not run
                return False
            if self._proven is not None and session_setup.classify(command) is not None:
                self._candidate = command
        held, self._held = self._held, None
        if held:
            self._upstream_write(b"".join(held))
            self._sent_held = held
            self._swallow += len(held)
        return False

    def _prove_candidate(self) -> None:
        """The client sent its next command, so it has the reply to the candidate: if that is one
        whole OK, this server accepts the statement."""
        command, self._candidate = self._candidate, None
        last = self._last
        if last is not None and not self._older and len(self._expected) == 1 and len(last) > HEADER_SIZE \
                and (last[0] | last[1] << 8 | last[2] << 16) == len(last) - HEADER_SIZE:
            assert self._proven is not None and command is not None  # a candidate is set only when proven is
            self._proven.learn(command, last[HEADER_SIZE:])

    def _drop_setup_replies(self, data: bytes) -> bytes:
        buffer = self._swallowed + data if self._swallowed else data
        size = len(buffer)
        position = 0
        while self._swallow and position + HEADER_SIZE <= size:
            end = position + HEADER_SIZE + (buffer[position] | buffer[position + 1] << 8 | buffer[position + 2] << 16)
            if end > size:
                break
            if self._swallow <= self._own:  # dbkeeper's own (wait_timeout): OK or not, nothing to tell
                self._own -= 1
                self._swallow -= 1
                position = end
                if not self._own and self._demand.waiting:
                    self._demand.reply_ended()  # the session may give its connection up now
                continue
            if end == position + HEADER_SIZE or buffer[position + HEADER_SIZE] != OK_HEADER:
                self._setup_failed(buffer[position + HEADER_SIZE:end])
                return b""
            if self._tracked and len(self._sent_held) - (self._swallow - self._own) >= self._own_held:
                try:  # a setup statement of the session's own: what it set is replayed on a move
                    self._note(self.session.ok(parse_ok(buffer[position + HEADER_SIZE:end])))  # type: ignore[union-attr]
                except ProtocolError:
                    self._note(self.session.unfollowed())  # type: ignore[union-attr]
            self._swallow -= 1
            position = end
        if self._swallow:
            self._swallowed = buffer[position:]
            return b""
        self._swallowed = b""
        return buffer[position:]

    def _setup_failed(self, reply: bytes) -> None:
        """A held statement failed after all (the server changed under us). The client was told
        OK: its session can't go on, and the upstream's state is unknown."""
        failed = self._sent_held[len(self._sent_held) - (self._swallow - self._own)]
        if self._proven is not None:
            self._proven.forget(failed[HEADER_SIZE:])
        self._swallow = self._own = 0
        self._swallowed = b""
        self.tracker.broken = "a held session-setup statement failed"
        self._client_write = _discard  # the rest of the stream answers commands of a session now over
        self.client.setup_failed(reply)

    def _on_commands(self, commands: list[int]) -> None:
        if not self._replies_ended():
            self._feed_tracker()
        for code in commands:
            if code == FILE_DATA or code == FILE_END:
                # the tracker, given every reply byte relayed so far, checks that a LOCAL INFILE
                # request is what this packet answers
                self._feed_tracker()
                self.tracker.file_packet(code == FILE_END)
                continue
            self.commands += 1
            if code not in NO_REPLY:
                self._expected.append(code)
            if code == COMMAND.COM_SET_OPTION:
                self.upstream.forget_options()

    def _replies_ended(self) -> bool:
        """True (and the saved replies dropped) when every reply relayed so far has ended, as far
        as can be told without walking the replies."""
        if self._last is None:
            return not self._expected and self.tracker.idle
        last = self._last
        if len(last) < 9 and self._older:  # a final EOF may straddle the last two chunks
            last = (self._older[-1] + last)[-9:]
        if len(self._expected) == 1 and self.tracker.idle and reply_end(last) < UNCLOSED:
            self._expected.clear()
            self._older.clear()
            self._older_size = 0
            self._ended = last
            if self._watch:
                self._note(self.session.reply_ended(reply_marks(reply_end(last))))  # type: ignore[union-attr]
            self._last = None
            return True
        return False

    def upstream_data(self, data: bytes) -> None:
        if self._swallow:
            data = self._drop_setup_replies(data)
            if not data:
                return
        ended = reply_end(data)
        # An OK starting the reply to the one command outstanding: one whole OK, or a chunk that
        # starts with one and goes on (a result set's end, nearly every reply: one comparison)
        if ended >= WHOLE_OK and (ended < ERRED or ended == UNCLOSED and len(data) > HEADER_SIZE
                                  and data[HEADER_SIZE] == OK_HEADER) \
                and self._last is None and self._tracked and len(self._expected) == 1 and self.tracker.idle:
            rewritten = self._first_reply_packet(data)
            if rewritten is not data:
                data = rewritten
                ended = reply_end(data)
        self._client_write(data)
        previous = self._last
        self._last = data
        self._end = ended
        self._ready = ended < self._closing
        if previous is not None:  # a reply of several chunks: keep them all, bounded
            self._older.append(previous)
            self._older_size += len(previous)
            if self._older_size > _UNFED_LIMIT:
                self._feed_tracker()
        if ended < UNCLOSED:
            # nothing to do, nearly always: the session movable, out of a transaction, its
            # connection on the short wait_timeout (the test costs a few attribute reads)
            if self._follow_wait:
                if ended & _ATTENTION or self._unsettled or self._pins:
                    self._reply_ended(ended)
                else:
                    self._reply_status = ended
            if self._demand.waiting:
                self._demand.reply_ended()

    def _reply_ended(self, ended: int) -> None:
        """A reply ended that the wait_timeout's following must look at."""
        if ended & ERRED:
            # no status: a failed statement leaves a transaction open as far as can be told when
            # one was, or when autocommit is off (it may have opened one before failing)
            status = self._reply_status
            ended = status | (0 if status & _AUTOCOMMIT else _IN_TRANS)
        self._reply_status = ended
        if len(self._expected) <= 1:
            self._wait_after_reply(ended)

    def _feed_tracker(self) -> None:
        tracker = self.tracker
        if self._expected or self._last is not None:
            self._ended = None  # the tracker sees the latest reply's end
        for code in self._expected:
            tracker.expect(code)
        self._expected.clear()
        tracker.marks = 0
        for chunk in self._older:
            tracker.feed(chunk)
        if self._last is not None:
            tracker.feed(self._last)
        if self._watch and tracker.marks:  # a reply walked here left warnings or changed state
            self._note(self.session.reply_ended(tracker.marks))  # type: ignore[union-attr]
        self._older.clear()
        self._older_size = 0
        self._last = None
        self._simple = tracker.idle and self.scanner.at_boundary and self._held is None and self._candidate is None
        self._ready = True  # nothing awaits a reply but what the tracker follows (then not _simple)
        self._closing = -1

    def settle(self) -> bool:
        """At the end of a session, or before a command dbkeeper answers itself
        (COM_RESET_CONNECTION, COM_CHANGE_USER, COM_QUIT): is the upstream between replies, so it
        can be reset and reused? Always the exact walk of what was relayed since the last proof:
        a last chunk that ends with an EOF may end the column definitions, not the rows (a client
        that quits or resets in the middle of a result; found by the in-process fuzzer)."""
        if self._swallow > self._own:  # replies to held statements of the session's own to come
            return False
        self._feed_tracker()
        return self.tracker.idle and self.scanner.at_boundary

    @property
    def why_not_idle(self) -> str:
        if self.tracker.broken:
            return self.tracker.broken
        if self._swallow > self._own:
            return f"{self._swallow - self._own} reply(ies) to held session-setup statements unfinished"
        if not self.scanner.at_boundary:
            return "client stopped mid-packet"
        return f"{self.tracker.outstanding} reply(ies) unfinished"

    # Backpressure: a slow reader pauses the other side instead of buffering without bound.
    def client_congested(self, congested: bool) -> None:
        transport = self.upstream.transport
        if transport is not None and not transport.is_closing():
            (transport.pause_reading if congested else transport.resume_reading)()

    def upstream_congested(self, congested: bool) -> None:
        self.client.set_reading(not congested)

    def upstream_lost(self) -> None:
        self.client.upstream_lost()
