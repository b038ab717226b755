"""The state file: how the wrapper learns, from the extension itself, what it serves.

The wrapper (layer/dbkeeper-wrapper) runs in the runtime's process, before the function, and must
decide whether to point DB_HOST/DB_PORT at dbkeeper. Re-reading DBKEEPER_* settings there would
be a second parser with its own defaults, and a socket file on disk can outlive the process that
bound it. So the extension, once its listeners are bound and before it registers (Lambda starts
the runtime, and so the wrapper, only after every extension has registered), writes what it
serves; it removes the file when it stops serving. No file: not serving (disabled, failed open at
INIT, not started, exited).

Content: plain `key=value` lines, no quoting; no value can contain a newline (numbers, and a
socket path Config rejects control characters in). The wrapper reads it with `read`, never
evaluates it, and ignores keys it does not know.

    port=3306                  TCP port on 127.0.0.1; 0: no TCP listener
    socket=/tmp/dbkeeper.sock  Unix socket; empty: none
    pid=123                    the extension's process: a file whose pid is gone is stale

Path: /tmp/.dbkeeper-<AWS_LAMBDA_RUNTIME_API>.state, every byte of AWS_LAMBDA_RUNTIME_API outside
[A-Za-z0-9.] replaced by '_' (127.0.0.1:9001 -> /tmp/.dbkeeper-127.0.0.1_9001.state). Lambda's
/tmp belongs to one sandbox, but local emulators and the tests run many sandboxes on one host
with a shared /tmp; each has its own Runtime API address, so their files never collide. The
wrapper mirrors exactly this one rule (`state_path`); a unit test holds the two together.
"""

from __future__ import annotations

import os

from .errors import StateFileError

DIRECTORY = "/tmp"  # the one writable directory on Lambda, shared by the runtime and extensions
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def state_path(runtime_api: str) -> str:
    """Bytes, not characters: the wrapper's shell walks the value byte by byte (C locale)."""
    name = "".join(chr(byte) if byte in _KEPT else "_" for byte in os.fsencode(runtime_api))
    return f"{DIRECTORY}/.dbkeeper-{name}.state"


def write_state(path: str, port: int, socket_path: str | None, pid: int) -> None:
    """Atomically (temp file in the same directory + rename): the wrapper sees no file or a whole
    one. Mode 0600: on Lambda the runtime runs as the same user as the extensions."""
    fields = {"port": str(port), "socket": socket_path or "", "pid": str(pid)}
    if any(ch in value for value in fields.values() for ch in "\r\n\0"):
        raise StateFileError(f"state file {path}: a value contains a line break")
    text = "".join(f"{key}={value}\n" for key, value in fields.items())
    temporary = f"{path}.{pid}.tmp"
    try:
        _unlink(temporary)  # left by a predecessor that had the same pid
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as file:
            file.write(text)
        os.rename(temporary, path)
    except OSError as exc:
        try:
            _unlink(temporary)
        except OSError:
            pass
        raise StateFileError(f"state file {path}: cannot write: {exc.strerror or exc}") from exc


def remove_state(path: str, pid: int | None = None) -> None:
    """Best effort, never raises. With `pid`: only a file that names that pid (a successor's file,
    written after this process stopped serving, is left alone)."""
    try:
        if pid is not None and read_state(path).get("pid") != str(pid):
            return
        _unlink(path)
    except OSError:
        pass


def read_state(path: str) -> dict[str, str]:
    """The file as the wrapper reads it (tests, and remove_state's ownership check)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        return dict(line.rstrip("\n").partition("=")[::2] for line in file)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
