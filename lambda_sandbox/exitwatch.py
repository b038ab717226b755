"""Exit statuses of processes that are not our children (the RIE's extensions and runtime), from the
kernel's process events connector (NETLINK_CONNECTOR, CN_IDX_PROC; root only).

The RIE reaps its extensions itself and logs their exit status only when they die outside a shutdown,
so RieSandbox learns "exited with 0" or "SIGKILLed at the deadline" here: the kernel broadcasts every
process exit with its wait status to listeners, which observes without touching the processes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from typing import Optional

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXIT = 0x80000000
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
EVENT_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
EXIT_EVENT = struct.Struct("=IIII")  # pid, tgid, exit_code (wait status), exit_signal
KEEP = 8192  # recent exits remembered (a lookup happens right after the process is gone)


def returncode(status: int) -> int:
    """A wait status in Popen's convention: exit code, or -signal."""
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


class ExitWatcher:
    """Remembers the exit status of every process that ends while it listens."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((0, CN_IDX_PROC))
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        self._sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), 3, 0, 0, 0) + cn)  # 3 = NLMSG_DONE
        self._exits: OrderedDict[int, int] = OrderedDict()
        self._cv = threading.Condition()
        self.lost = False  # the kernel dropped events (receive buffer overrun)
        threading.Thread(target=self._run, daemon=True, name="lsb-exitwatch").start()

    def _run(self) -> None:
        offset = NLMSG_HDR.size + CN_MSG.size
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost = True
                    continue
                return
            pos = 0
            while pos + offset + EVENT_HDR.size <= len(data):
                msg_len = NLMSG_HDR.unpack_from(data, pos)[0]
                what = EVENT_HDR.unpack_from(data, pos + offset)[0]
                if what == PROC_EVENT_EXIT:
                    pid, tgid, status, _sig = EXIT_EVENT.unpack_from(data, pos + offset + EVENT_HDR.size)
                    if pid == tgid:
                        with self._cv:
                            self._exits[pid] = status
                            while len(self._exits) > KEEP:
                                self._exits.popitem(last=False)
                            self._cv.notify_all()
                pos += max(msg_len, 1)

    def returncode(self, pid: int, timeout: float = 1.0) -> Optional[int]:
        """pid's exit code (Popen convention), waiting up to timeout for the event; None if unknown."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while pid not in self._exits:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cv.wait(remaining)
            return returncode(self._exits[pid])


_watcher: Optional[ExitWatcher] = None
_lock = threading.Lock()


def shared() -> Optional[ExitWatcher]:
    """The process-wide watcher (started on first use); None where the connector is unavailable."""
    global _watcher
    with _lock:
        if _watcher is None and os.geteuid() == 0:
            try:
                _watcher = ExitWatcher()
            except OSError:
                return None
        return _watcher
