"""Finds command boundaries in the function's byte stream, so the relay can forward whole chunks
untouched and still see every command's code. No I/O.

A command is a packet whose sequence id is 0. A packet that starts with another sequence id is no
command: it continues an exchange the server started, which in the command phase is LOAD DATA
LOCAL INFILE (the file's packets, then an empty packet, numbered on from the server's request).
Those are reported as FILE_DATA / FILE_END, for the relay to check against the server's replies.

Bytes of a command whose command byte has not arrived yet are held back (at most 4), so a command
dbkeeper must answer itself (COM_QUIT, COM_CHANGE_USER, COM_RESET_CONNECTION) is never half-sent
upstream.
"""

from __future__ import annotations

from pymysql.constants import COMMAND

from .packets import HEADER_SIZE, MAX_FRAME

COM_RESET_CONNECTION = 0x1F  # MySQL 5.7+/MariaDB 10.2+; pymysql.constants.COMMAND calls it COM_END
# The server reads an empty packet as COM_SLEEP (MariaDB's do_command, MySQL's alike) and answers it
# like any unknown command: one ERR 1047. It is a command that owes one reply, never "nothing".
EMPTY_PACKET = COMMAND.COM_SLEEP
# Not command codes (those are bytes): a packet continuing an exchange, with data / empty.
FILE_DATA = -1
FILE_END = -2

INTERCEPTED = frozenset((COMMAND.COM_QUIT, COMMAND.COM_CHANGE_USER, COM_RESET_CONNECTION))
NO_REPLY = frozenset((COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_CLOSE))


class CommandScanner:
    def __init__(self) -> None:
        self._remaining = 0        # payload bytes of the current frame still to pass
        self._continuation = False  # the current frame's packet goes on in the next frame
        self._held = b""
        # where, in the bytes the last feed returned to forward, the first command starting in
        # them begins (-1: none): the relay reads a query's text from there
        self.first_start = -1

    def feed(self, data: bytes) -> tuple[bytes, list[int], bytes | None]:
        """Return (bytes to forward now, codes of commands starting in them, rest or None).

        `rest` is not None when an intercepted command starts: it holds that command's bytes and
        everything after, none of which has been forwarded; the scanner then expects to be reset.
        """
        self.first_start = -1
        if self._held:
            data = self._held + data
            self._held = b""
        size = len(data)
        if self._remaining >= size:  # the middle of a large packet: the common case for bulk data
            self._remaining -= size
            return data, [], None
        position = self._remaining
        self._remaining = 0
        commands: list[int] = []
        while position < size:
            if position + HEADER_SIZE > size:  # header not here yet
                self._held = data[position:]
                return data[:position], commands, None
            length = data[position] | data[position + 1] << 8 | data[position + 2] << 16
            if not self._continuation:
                if data[position + 3]:  # file data, never a command (its first byte may be 0x01)
                    commands.append(FILE_DATA if length else FILE_END)
                elif length == 0:
                    # complete with its header: holding it back would leave it unsent, and its
                    # sender waiting for a reply, until the client sent something else
                    commands.append(EMPTY_PACKET)
                elif position + HEADER_SIZE == size:  # command byte not here yet
                    self._held = data[position:]
                    return data[:position], commands, None
                else:
                    code = data[position + HEADER_SIZE]
                    if code in INTERCEPTED:
                        return data[:position], commands, data[position:]
                    if not commands:
                        self.first_start = position
                    commands.append(code)
            self._continuation = length == MAX_FRAME
            end = position + HEADER_SIZE + length
            if end > size:
                self._remaining = end - size
                return data, commands, None
            position = end
        return data, commands, None

    @property
    def at_boundary(self) -> bool:
        return not (self._remaining or self._continuation or self._held)
