"""Password proofs for both roles: verifying a local client, answering the upstream server.

The scramble arithmetic is PyMySQL's; what is ours is which proof goes where.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from pymysql import _auth

from ..errors import UpstreamError
from .handshake import CACHING_SHA2_PASSWORD, CLEAR_PASSWORD, NATIVE_PASSWORD, SCRAMBLE_LENGTH

# NUL and '$' never appear in a scramble (clients NUL-terminate it); each becomes its successor,
# which leaves ~159 bits of randomness in 20 bytes.
_SCRAMBLE_BYTES = bytes(b + 1 if b in (0, 0x24) else b for b in range(256))


def new_scramble() -> bytes:
    """20 random bytes without NUL or '$', as servers send."""
    return os.urandom(SCRAMBLE_LENGTH).translate(_SCRAMBLE_BYTES)


def native_proof(password: str, scramble: bytes) -> bytes:
    """SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))); empty for an empty password."""
    if not password:
        return b""
    proof: bytes = _auth.scramble_native_password(password.encode(), scramble[:SCRAMBLE_LENGTH])
    return proof


def native_password_hash(password: str) -> bytes:
    """SHA1(SHA1(password)): what a server stores and checks a proof against (empty: no password)."""
    return hashlib.sha1(hashlib.sha1(password.encode()).digest()).digest() if password else b""


def verify_native(password_hash: bytes, scramble: bytes, proof: bytes) -> bool:
    """The server's check, from the stored hash (computed once) rather than the password:
    SHA1(proof XOR SHA1(scramble + hash)) == hash."""
    if not password_hash:
        return proof == b""
    if len(proof) != 20:
        return False
    mask = hashlib.sha1(scramble[:SCRAMBLE_LENGTH] + password_hash).digest()
    stage1 = (int.from_bytes(proof, "big") ^ int.from_bytes(mask, "big")).to_bytes(20, "big")
    return hmac.compare_digest(hashlib.sha1(stage1).digest(), password_hash)


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
