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
from .protocol.messages import OK_HEADER
from .protocol.packets import HEADER_SIZE, MAX_FRAME, frame
from .protocol.responses import ResponseTracker, closes_reply, ends_with_eof, reply_marks
from .protocol.session import (
    OBSERVABLES,
    RELEASABLE,
    SERVER_SESSION_STATE_CHANGED,
    Ending,
    Pin,
    SessionModel,
    ending_of,
    parse_ok,
    untracked_ok,
)

_UNFED_LIMIT = 4 << 20  # walk saved reply bytes once this many pile up, to bound memory
# Commands the fast path may pass without the scanner: one reply each, nothing to bookkeep.
_NOT_FAST = INTERCEPTED | NO_REPLY | {COMMAND.COM_SET_OPTION}
# SERVER_SESSION_STATE_CHANGED in the high byte of an OK's status
_STATE_CHANGED_HIGH = SERVER_SESSION_STATE_CHANGED >> 8
_QUERY_OVERLAP = 64  # text kept from one piece of a long query to test words split between reads

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


class Relay:
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
        self._last_closes = False  # closes_reply(self._last), worked out as it arrived
        # The fast path's precondition: the client is between packets, the tracker holds no
        # unfinished reply and at most one command awaits its reply. After an idle wait the
        # memory a path touches costs more than the instructions it runs, so the fast path
        # reads only this flag, the chunk it forwards and the last reply chunk.
        self._simple = True
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
        self._swallow = 0                    # replies to held statements still to drop upstream-side
        self._swallowed = b""                # the start of the next one of them
        # --- the session model
        self.session = session
        self._tracked = session is not None and upstream.tracked
        self._watch = session is not None and not session.pins - RELEASABLE  # commands can still pin it
        self._ended: bytes | None = None  # the last chunk of the latest reply the fast path proved ended
        self._query_tail: str | None = None  # a long query's text so far continues in the next read
        self._demand = demand
        self._follow_wait = follow_wait and self._tracked
        self._own = 0  # of the replies to drop (_swallow), the last ones answer dbkeeper's own statements

    def client_data(self, data: bytes) -> bytes | None:
        """Forward what the client sent; return the bytes of an intercepted command, if any."""
        if self._candidate is not None:
            self._prove_candidate()
        if self._held is not None and self._answered_setup(data):
            return None
        return self._forward(data)

    def _forward(self, data: bytes) -> bytes | None:
        # the shape of nearly every query: one whole command (sequence id 0) after a whole reply
        if self._simple:
            size = len(data)
            if size > 4 and (data[0] | data[1] << 8 | data[2] << 16) == size - 4 < MAX_FRAME \
                    and data[3] == 0 and data[4] not in _NOT_FAST:
                last = self._last
                if not self._expected if last is None else len(self._expected) == 1 and self._last_closes:
                    if self._watch:
                        session = self.session
                        assert session is not None  # _watch is set only with a session
                        # A statement that may read the session's wait_timeout must find the server's
                        # own: the only test before the command goes (the rest after: no latency)
                        text = data.decode("latin-1").upper() if data[4] == COMMAND.COM_QUERY else ""
                        if self._follow_wait and self.upstream.short_wait \
                                and ("TIMEOUT" in text or "VARIABLES" in text):
                            self._wait_before_command(True)
                        self._upstream_write(data)
                        if last is not None:
                            self._ended = last
                            marks = reply_marks(last)
                            if marks or session.uses_table:
                                self._note(session.reply_ended(marks))
                        self._note(session.query_upper(text, HEADER_SIZE) if text
                                   else session.command(data, HEADER_SIZE))
                    else:
                        if last is not None:
                            self._ended = last
                        self._upstream_write(data)
                    self._expected = [data[4]]
                    if self._older:
                        self._older.clear()
                        self._older_size = 0
                    self._last = None
                    self.commands += 1
                    return None
        forward, commands, rest = self.scanner.feed(data)
        if commands:
            self._on_commands(commands)
        if self._watch:
            self._follow(forward, commands)
            if self._follow_wait:
                text = forward.decode("latin-1").upper() if commands else ""
                self._wait_before_command("TIMEOUT" in text or "VARIABLES" in text)
        if forward:
            self._upstream_write(forward)
        self._simple = self.tracker.idle and self.scanner.at_boundary and len(self._expected) <= 1
        return rest

    # --- the session model ----------------------------------------------------------------------
    def _note(self, pins: list[Pin]) -> bool:
        if pins:
            assert self.session is not None  # pins come from it
            self._watch = not self.session.pins - RELEASABLE
            self.client.session_pinned(pins)
            return True
        return False

    # --- the session wait_timeout follows the session ---------------------------------------
    # A lent connection keeps the short wait_timeout of the pool while its session could move
    # (were it dropped while the client is idle, the session's next command gets another one): a
    # sandbox reclaimed without SHUTDOWN leaves it on the server that long, not 8 hours. A session
    # that could not move (an open transaction, a user variable, ...) gets the server's own
    # wait_timeout back before it idles, as a direct connection has it. The statements go
    # between a reply's end and the next command, their replies dropped like held ones'.
    def _needs_server_wait(self, status: int) -> bool:
        session = self.session
        assert session is not None  # _follow_wait is set only with a session
        return bool(status & SERVER_STATUS.SERVER_STATUS_IN_TRANS or session.pins and session.pins - OBSERVABLES)

    def _wait_before_command(self, reads_variables: bool = False) -> None:
        """A command that may read the session's wait_timeout (or, on the slow path, one that pins
        the session) is about to go: the server's wait_timeout first. (A command that pins gets it
        after its reply on the fast path, before the client idles: _wait_after_reply.)"""
        if self.upstream.short_wait and (reads_variables or self._needs_server_wait(0)) \
                and not self._stop_following():
            self._write_own(self.upstream.wait_command(False))

    def _wait_after_reply(self, chunk: bytes) -> None:
        """A reply just ended (cheap test): should the wait_timeout change before the client idles?"""
        if ends_with_eof(chunk):
            status = chunk[-2]
        elif len(chunk) >= 11 and chunk[4] == OK_HEADER and chunk[5] < 0xFB and chunk[6] < 0xFB:
            status = chunk[7]
        else:
            return  # an ERR (nothing changed) or an unusual OK: the next reply decides
        short = not self._needs_server_wait(status)
        if short != self.upstream.short_wait and not self._stop_following() and self.settle():
            self._write_own(self.upstream.wait_command(short))

    def _stop_following(self) -> bool:
        """The session set its own wait_timeout: from now on it is the session's to keep."""
        session = self.session
        if session is not None and session.sets_own_wait_timeout:
            self._follow_wait = False
            return True
        return False

    def _write_own(self, command: bytes) -> None:
        self._upstream_write(command)
        self._swallow += 1
        self._own += 1

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
                demand = self._demand
                if not self._own and demand is not None and demand.waiting:
                    demand.reply_ended()  # the session may give its connection up now
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
        if len(self._expected) == 1 and self.tracker.idle and closes_reply(last):
            self._expected.clear()
            self._older.clear()
            self._older_size = 0
            self._ended = last
            if self._watch:
                self._note(self.session.reply_ended(reply_marks(last)))  # type: ignore[union-attr]
            self._last = None
            return True
        return False

    def upstream_data(self, data: bytes) -> None:
        if self._swallow:
            data = self._drop_setup_replies(data)
            if not data:
                return
        if self._tracked and self._last is None and len(data) > HEADER_SIZE and data[HEADER_SIZE] == OK_HEADER \
                and len(self._expected) == 1 and self.tracker.idle:
            data = self._first_reply_packet(data)
        self._client_write(data)
        previous = self._last
        self._last = data
        closes = self._last_closes = closes_reply(data)
        if previous is not None:  # a reply of several chunks: keep them all, bounded
            self._older.append(previous)
            self._older_size += len(previous)
            if self._older_size > _UNFED_LIMIT:
                self._feed_tracker()
        if closes:
            if self._follow_wait and len(self._expected) <= 1:
                self._wait_after_reply(data)
            demand = self._demand
            if demand is not None and demand.waiting:
                demand.reply_ended()

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
        self._simple = tracker.idle and self.scanner.at_boundary

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
