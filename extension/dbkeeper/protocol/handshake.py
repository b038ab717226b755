"""Connection-phase messages: the v10 greeting, the 4.1 handshake response, SSL request, auth switch.

Both directions are here because dbkeeper plays both roles: a client toward the upstream server
and a server toward the function. No I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from pymysql.constants import CLIENT

from ..errors import ProtocolError
from .packets import lenenc_bytes, lenenc_int, read_lenenc_bytes, read_lenenc_int, read_nul_bytes

PROTOCOL_VERSION = 10
NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2_PASSWORD = "caching_sha2_password"
CLEAR_PASSWORD = "mysql_clear_password"
SCRAMBLE_LENGTH = 20
# MariaDB reuses bit 0 (CLIENT_LONG_PASSWORD, "CLIENT_MYSQL") to say "no MariaDB extended
# capabilities follow"; keeping it set makes every client treat us as plain MySQL.
CLIENT_MYSQL = CLIENT.LONG_PASSWORD


class Greeting(NamedTuple):
    server_version: str
    connection_id: int
    scramble: bytes
    capabilities: int
    collation_id: int
    status: int
    auth_plugin: str
    mariadb_capabilities: int = 0


class HandshakeResponse(NamedTuple):
    capabilities: int
    max_packet: int
    collation_id: int
    user: str
    auth_response: bytes
    database: str | None = None
    auth_plugin: str | None = None
    attributes: dict[str, str] = {}  # never mutated
    ssl_request: bool = False  # a bare SSLRequest: the client wants TLS before the rest


def parse_greeting(payload: bytes) -> Greeting:
    try:
        if payload[0] != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {payload[0]}")
        version, position = read_nul_bytes(payload, 1)
        connection_id = int.from_bytes(payload[position:position + 4], "little")
        scramble_1 = payload[position + 4:position + 12]
        position += 13
        capabilities = int.from_bytes(payload[position:position + 2], "little")
        collation_id = payload[position + 2]
        status = int.from_bytes(payload[position + 3:position + 5], "little")
        capabilities |= int.from_bytes(payload[position + 5:position + 7], "little") << 16
        scramble_length = payload[position + 7]
        mariadb_capabilities = 0
        if not capabilities & CLIENT_MYSQL:
            mariadb_capabilities = int.from_bytes(payload[position + 14:position + 18], "little")
        position += 18
        scramble_2 = b""
        if capabilities & CLIENT.SECURE_CONNECTION:
            length = max(13, scramble_length - 8)
            scramble_2 = payload[position:position + length].rstrip(b"\0")
            position += length
        plugin = NATIVE_PASSWORD
        if capabilities & CLIENT.PLUGIN_AUTH and position < len(payload):
            name, position = _read_nul_or_rest(payload, position)
            plugin = name.decode("ascii", "replace")
    except IndexError as exc:
        raise ProtocolError("truncated greeting") from exc
    return Greeting(version.decode("utf-8", "replace"), connection_id, scramble_1 + scramble_2,
                    capabilities, collation_id, status, plugin, mariadb_capabilities)


def build_greeting(greeting: Greeting) -> bytes:
    capabilities = greeting.capabilities
    scramble = greeting.scramble
    return b"".join((
        bytes((PROTOCOL_VERSION,)),
        greeting.server_version.encode() + b"\0",
        greeting.connection_id.to_bytes(4, "little"),
        scramble[:8], b"\0",
        (capabilities & 0xFFFF).to_bytes(2, "little"),
        bytes((greeting.collation_id & 0xFF,)),
        greeting.status.to_bytes(2, "little"),
        ((capabilities >> 16) & 0xFFFF).to_bytes(2, "little"),
        bytes((len(scramble) + 1,)),
        b"\0" * 6,
        (0 if capabilities & CLIENT_MYSQL else greeting.mariadb_capabilities).to_bytes(4, "little"),
        scramble[8:] + b"\0",
        greeting.auth_plugin.encode() + b"\0",
    ))


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    try:
        if len(payload) < 32:
            raise ProtocolError("truncated handshake response")
        capabilities = int.from_bytes(payload[0:4], "little")
        if not capabilities & CLIENT.PROTOCOL_41:
            raise ProtocolError("pre-4.1 clients are not supported")
        max_packet = int.from_bytes(payload[4:8], "little")
        collation_id = payload[8]
        if len(payload) == 32:
            if capabilities & CLIENT.SSL:
                return HandshakeResponse(capabilities, max_packet, collation_id, "", b"", ssl_request=True)
            raise ProtocolError("truncated handshake response")
        user, position = read_nul_bytes(payload, 32)
        if capabilities & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            auth_response, position = read_lenenc_bytes(payload, position)
        elif capabilities & CLIENT.SECURE_CONNECTION:
            length = payload[position]
            auth_response = payload[position + 1:position + 1 + length]
            position += 1 + length
        else:
            auth_response, position = _read_nul_or_rest(payload, position)
        database = None
        if capabilities & CLIENT.CONNECT_WITH_DB and position < len(payload):
            name, position = _read_nul_or_rest(payload, position)
            database = name.decode("utf-8", "replace") or None
        plugin = None
        if capabilities & CLIENT.PLUGIN_AUTH and position < len(payload):
            name, position = _read_nul_or_rest(payload, position)
            plugin = name.decode("ascii", "replace") or None
        attributes = {}
        if capabilities & CLIENT.CONNECT_ATTRS and position < len(payload):
            total, position = read_lenenc_int(payload, position)
            end = position + (total or 0)
            if end > len(payload):
                raise ProtocolError("truncated connection attributes")
            while position < end:
                key, position = read_lenenc_bytes(payload, position)
                value, position = read_lenenc_bytes(payload, position)
                attributes[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    except IndexError as exc:
        raise ProtocolError("truncated handshake response") from exc
    return HandshakeResponse(capabilities, max_packet, collation_id, user.decode("utf-8", "replace"),
                             bytes(auth_response), database, plugin, attributes)


def build_handshake_response(response: HandshakeResponse) -> bytes:
    capabilities = response.capabilities
    parts = [_response_prefix(capabilities, response.max_packet, response.collation_id),
             response.user.encode() + b"\0"]
    if capabilities & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        parts.append(lenenc_bytes(response.auth_response))
    else:
        parts.append(bytes((len(response.auth_response),)) + response.auth_response)
    if capabilities & CLIENT.CONNECT_WITH_DB:
        parts.append((response.database or "").encode() + b"\0")
    if capabilities & CLIENT.PLUGIN_AUTH:
        parts.append((response.auth_plugin or NATIVE_PASSWORD).encode() + b"\0")
    if capabilities & CLIENT.CONNECT_ATTRS:
        encoded = b"".join(lenenc_bytes(k.encode()) + lenenc_bytes(v.encode()) for k, v in response.attributes.items())
        parts.append(lenenc_int(len(encoded)) + encoded)
    return b"".join(parts)


def build_ssl_request(capabilities: int, max_packet: int, collation_id: int) -> bytes:
    return _response_prefix(capabilities | CLIENT.SSL, max_packet, collation_id)


def _response_prefix(capabilities: int, max_packet: int, collation_id: int) -> bytes:
    return (capabilities.to_bytes(4, "little") + max_packet.to_bytes(4, "little")
            + bytes((collation_id & 0xFF,)) + b"\0" * 23)


def parse_auth_switch(payload: bytes) -> tuple[str, bytes]:
    """AuthSwitchRequest (0xFE plugin NUL data) -> (plugin, scramble)."""
    if not payload or payload[0] != 0xFE:
        raise ProtocolError("not an auth switch request")
    if len(payload) == 1:  # the pre-4.1 "old password" switch
        return "mysql_old_password", b""
    name, position = _read_nul_or_rest(payload, 1)
    return name.decode("ascii", "replace"), payload[position:].rstrip(b"\0")


def build_auth_switch(plugin: str, scramble: bytes) -> bytes:
    return b"\xfe" + plugin.encode() + b"\0" + scramble + b"\0"


def _read_nul_or_rest(data: bytes, position: int) -> tuple[bytes, int]:
    end = data.find(b"\0", position)
    if end < 0:
        return data[position:], len(data)
    return data[position:end], end + 1
