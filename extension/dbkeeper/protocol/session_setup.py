"""Session-setup statements: what drivers send right after connecting (PyMySQL: `SET NAMES
utf8mb4`, `SET AUTOCOMMIT = 0`), each one a round trip to the database before the function's first
real query. Through dbkeeper the connect itself is local, so these round trips are most of what
is left of a connect across a network.

A statement recognised here, and already accepted by this server once (so it cannot fail for
reasons of its own), can be answered with OK at once and sent on in front of the session's next
command: the server runs the same statements in the same order, pipelined. No I/O.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pymysql.constants import COMMAND, SERVER_STATUS

from .messages import OK_HEADER, ok_payload
from .packets import read_lenenc_int

# Patterns run on text already stripped of surrounding white space and one trailing ';' (by
# bytes.strip, which is linear), and every quantifier in them is followed by a token it cannot
# match: each match is linear in the statement's length. Two adjacent `\s*` around an optional
# `;` backtracked quadratically (a first COM_QUERY of spaces stalled the loop for seconds).
_NAME = rb"""(?:[A-Za-z0-9_]+|'[A-Za-z0-9_]+'|"[A-Za-z0-9_]+"|`[A-Za-z0-9_]+`)"""
_SET_NAMES = re.compile(rb"SET\s+NAMES\s+" + _NAME + rb"(?:\s+COLLATE\s+" + _NAME + rb")?\Z", re.I)
_SET_AUTOCOMMIT = re.compile(rb"SET\s+(?:SESSION\s+|@@(?:SESSION\.)?)?AUTOCOMMIT\s*=\s*"
                             rb"(0|1|ON|OFF|TRUE|FALSE|'ON'|'OFF')\Z", re.I)
# Drivers' setup statements are a few dozen bytes; anything longer is an ordinary query.
_LONGEST_SETUP = 200
_ON = frozenset((b"1", b"ON", b"TRUE", b"'ON'"))
_AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
_MOST_PROVEN = 32  # distinct statements remembered: drivers send a handful


class Effect(NamedTuple):
    autocommit: bool | None  # what the statement sets autocommit to; None: leaves it alone


class SetupStatement(NamedTuple):
    autocommit: bool | None
    warnings: int            # what the server reported when it accepted the statement


def classify(command: bytes) -> Effect | None:
    """For a COM_QUERY payload (command byte first): its effect if it is a setup statement."""
    if not command or command[0] != COMMAND.COM_QUERY:
        return None
    if len(command) > _LONGEST_SETUP:
        return None
    text = command[1:].strip()
    if text.endswith(b";"):
        text = text[:-1].rstrip()
    if _SET_NAMES.match(text):
        return Effect(None)
    match = _SET_AUTOCOMMIT.match(text)
    if match:
        return Effect(match.group(1).upper() in _ON)
    return None


class ProvenSetup:
    """The setup statements this server has accepted (exact bytes), shared by every session."""

    def __init__(self) -> None:
        self._accepted: dict[bytes, SetupStatement] = {}

    def get(self, command: bytes) -> SetupStatement | None:
        return self._accepted.get(command)

    def learn(self, command: bytes, reply_payload: bytes) -> None:
        """`reply_payload` is the server's whole reply to `command`: remembered only if it is OK."""
        if len(self._accepted) >= _MOST_PROVEN or not reply_payload or reply_payload[0] != OK_HEADER:
            return
        effect = classify(command)
        if effect is None:
            return
        _, position = read_lenenc_int(reply_payload, 1)
        _, position = read_lenenc_int(reply_payload, position)
        warnings = int.from_bytes(reply_payload[position + 2:position + 4], "little")
        self._accepted[command] = SetupStatement(effect.autocommit, warnings)

    def forget(self, command: bytes) -> None:
        self._accepted.pop(command, None)

    def __len__(self) -> int:
        return len(self._accepted)


def answer(statement: SetupStatement, status: int) -> tuple[bytes, int]:
    """The OK the server would send for `statement` in a session whose status flags are `status`,
    and the status flags after it."""
    if statement.autocommit is not None:
        status = status | _AUTOCOMMIT if statement.autocommit else status & ~_AUTOCOMMIT
    return ok_payload(status=status, warnings=statement.warnings), status
