"""Stand-ins for the Relay's two sides in unit tests (no sockets): a transport that records what
is written, and a side with the attributes and callbacks the Relay uses."""

from __future__ import annotations

from pymysql.constants import SERVER_STATUS


class Recorder:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)

    def is_closing(self):
        return False


class Side:
    def __init__(self, status=SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT):
        self.transport = Recorder()
        self.status = status
        self.options_forgotten = 0
        self.failures = []

    def forget_options(self):
        self.options_forgotten += 1

    def setup_failed(self, reply):
        self.failures.append(reply)
