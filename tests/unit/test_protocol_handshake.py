"""Connection-phase messages round-trip, and password proofs verify as a MySQL server would."""

import pytest
from pymysql import _auth
from pymysql.constants import CLIENT

from dbkeeper.errors import ProtocolError, UpstreamError
from dbkeeper.protocol import auth, handshake, messages
from dbkeeper.protocol.packets import MAX_FRAME, PacketBuffer, frame, lenenc_int, read_lenenc_int


def test_a_greeting_round_trips():
    capabilities = CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.LONG_PASSWORD
    greeting = handshake.Greeting("5.5.5-10.11.19-MariaDB", 42, auth.new_scramble(), capabilities,
                                  45, 2, handshake.NATIVE_PASSWORD)
    assert handshake.parse_greeting(handshake.build_greeting(greeting)) == greeting


def test_a_handshake_response_round_trips_with_database_plugin_and_attributes():
    capabilities = (CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_WITH_DB
                    | CLIENT.CONNECT_ATTRS | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    response = handshake.HandshakeResponse(capabilities, 1 << 24, 45, "app", b"\x01" * 20, "appdb",
                                           handshake.NATIVE_PASSWORD, {"_client_name": "pymysql"})
    assert handshake.parse_handshake_response(handshake.build_handshake_response(response)) == response


def test_an_ssl_request_is_recognised():
    parsed = handshake.parse_handshake_response(handshake.build_ssl_request(CLIENT.PROTOCOL_41, 1 << 24, 45))
    assert parsed.ssl_request


@pytest.mark.parametrize("payload", [b"", b"\x0a", b"\x09garbage", b"\x0a5.5\x00\x01"])
def test_a_broken_greeting_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError):
        handshake.parse_greeting(payload)


@pytest.mark.parametrize("payload", [b"", b"\x00" * 10, (CLIENT.PROTOCOL_41).to_bytes(4, "little") + b"\x00" * 28,
                                     b"\x00" * 40])
def test_a_broken_handshake_response_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError):
        handshake.parse_handshake_response(payload)


def test_a_pymysql_proof_verifies_against_the_stored_hash_of_the_right_password_only():
    # given a scramble and the proof PyMySQL computes for it
    scramble = auth.new_scramble()
    proof = _auth.scramble_native_password(b"s3cret", scramble)
    # then only the hash of the same password accepts it
    assert auth.verify_native(auth.native_password_hash("s3cret"), scramble, proof)
    assert not auth.verify_native(auth.native_password_hash("wrong"), scramble, proof)
    assert not auth.verify_native(auth.native_password_hash("s3cret"), auth.new_scramble(), proof)
    assert not auth.verify_native(auth.native_password_hash("s3cret"), scramble, proof[:19])
    # and an empty password takes exactly an empty proof
    assert auth.verify_native(auth.native_password_hash(""), scramble, b"")
    assert not auth.verify_native(auth.native_password_hash(""), scramble, proof)


def test_the_stored_hash_is_the_servers_own_format():
    # MariaDB 10.11 answers SELECT PASSWORD('s3cret') with this
    assert "*" + auth.native_password_hash("s3cret").hex().upper() == "*B865CAE8F340F6CE1485A06F4492BB49718DF1EC"


def test_a_scramble_never_holds_nul_or_dollar_and_varies():
    scrambles = [auth.new_scramble() for _ in range(2000)]
    assert all(len(s) == 20 and b"\0" not in s and b"$" not in s for s in scrambles)
    assert len(set(scrambles)) == len(scrambles)


def test_clear_password_upstream_only_over_a_secure_channel():
    with pytest.raises(UpstreamError, match="DBKEEPER_DB_TLS"):
        auth.upstream_proof(handshake.CLEAR_PASSWORD, "token", b"x" * 20, secure_channel=False)
    assert auth.upstream_proof(handshake.CLEAR_PASSWORD, "token", b"x" * 20, secure_channel=True) == b"token\0"


def test_an_auth_switch_round_trips():
    scramble = auth.new_scramble()
    assert handshake.parse_auth_switch(handshake.build_auth_switch("mysql_native_password", scramble)) == (
        "mysql_native_password", scramble)


def test_err_and_ok_packets_round_trip():
    error = messages.parse_err(messages.err_payload(1045, "28000", "Access denied"))
    assert (error.errno, error.sqlstate, error.message) == (1045, "28000", "Access denied")
    assert messages.ok_status(messages.ok_payload(status=0x4002, affected_rows=300)) == 0x4002


def test_packets_of_16_mib_and_more_are_split_and_reassembled():
    payload = bytes(range(256)) * ((MAX_FRAME * 2) // 256 + 3)
    framed = frame(payload, 3)
    assert framed[3] == 3 and int.from_bytes(framed[:3], "little") == MAX_FRAME
    buffer = PacketBuffer(max_packet=len(payload))
    packets = []
    for start in range(0, len(framed), 1 << 20):
        packets += buffer.feed(framed[start:start + (1 << 20)])
    assert len(packets) == 1 and packets[0].payload == payload and packets[0].sequence_id == 3


def test_an_exactly_16_mib_payload_ends_with_an_empty_frame():
    framed = frame(b"\x00" * MAX_FRAME, 0)
    assert framed.endswith(b"\x00\x00\x00\x01")


def test_a_packet_claiming_more_than_the_limit_is_refused_before_it_is_buffered():
    with pytest.raises(ProtocolError):
        PacketBuffer(max_packet=1024).feed(b"\xff\xff\x7f\x00")


@pytest.mark.parametrize("value", [0, 250, 251, 65535, 65536, (1 << 24) - 1, 1 << 24, (1 << 64) - 1])
def test_length_encoded_integers_round_trip(value):
    assert read_lenenc_int(lenenc_int(value), 0) == (value, len(lenenc_int(value)))
