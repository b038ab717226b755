"""Password proofs for both roles: verifying a local client, answering the upstream server.

The scramble arithmetic is PyMySQL's; what is ours is which proof goes where.
"""

from __future__ import annotations

import hmac
import os

from pymysql import _auth

from ..errors import UpstreamError
from .handshake import CACHING_SHA2_PASSWORD, CLEAR_PASSWORD, NATIVE_PASSWORD, SCRAMBLE_LENGTH


def new_scramble() -> bytes:
    """20 random bytes without NUL or '$', as servers send (clients NUL-terminate it)."""
    scramble = bytearray()
    while len(scramble) < SCRAMBLE_LENGTH:
        scramble += bytes(b for b in os.urandom(SCRAMBLE_LENGTH) if b not in (0, 0x24))
    return bytes(scramble[:SCRAMBLE_LENGTH])


def native_proof(password: str, scramble: bytes) -> bytes:
    """SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))); empty for an empty password."""
    if not password:
        return b""
    return _auth.scramble_native_password(password.encode(), scramble[:SCRAMBLE_LENGTH])


def verify_native(password: str, scramble: bytes, proof: bytes) -> bool:
    return hmac.compare_digest(native_proof(password, scramble), proof)


def upstream_proof(plugin: str, password: str, scramble: bytes, secure_channel: bool) -> bytes:
    """What to send the upstream for `plugin` (in the handshake response or after an auth switch)."""
    if plugin == NATIVE_PASSWORD:
        return native_proof(password, scramble)
    if plugin == CACHING_SHA2_PASSWORD:
        return _auth.scramble_caching_sha2(password.encode(), scramble) if password else b""
    if plugin == CLEAR_PASSWORD:
        if not secure_channel:
            raise UpstreamError("the server asks for mysql_clear_password (e.g. an IAM token); "
                                "set DBKEEPER_DB_TLS=required so the password never crosses the network in clear")
        return password.encode() + b"\0"
    raise UpstreamError(f"upstream authentication plugin {plugin!r} is not supported")
