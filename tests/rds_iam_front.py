"""A stand-in for RDS's IAM authentication in front of a real MariaDB, for the tests.

What is real: the client side of the exchange as RDS runs it (TLS first, verified by the client
against the test CA; the server switches the client to `mysql_clear_password`; the client sends
its token in clear over TLS), and the check of the token itself: it must be a SigV4 presigned
`connect` URL for this host:port and user, for service `rds-db` in the region, made with the
access key and session token STS issued, not expired, and its signature is recomputed here with
the STS secret key (an implementation independent of botocore's signer).
What is not real: RDS's evaluation of the IAM policy (`rds-db:connect` on the user's ARN) and
RDS's own token verification; MariaDB cannot verify a token. Once the token checks out, this
front logs in to MariaDB with the user's real password and then relays bytes both ways.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import socket
import ssl
import sys
import threading
import urllib.parse
from pathlib import Path

from pymysql.constants import CLIENT

# The packet layouts come from dbkeeper's pure protocol functions (source tree); the real MariaDB
# behind this front checks every packet they build toward it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extension"))
from dbkeeper.protocol import handshake, messages  # noqa: E402
from dbkeeper.protocol.auth import native_proof  # noqa: E402

EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()


def _read_exact(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def read_packet(sock) -> tuple[int, bytes]:
    header = _read_exact(sock, 4)
    return header[3], _read_exact(sock, int.from_bytes(header[:3], "little"))


def write_packet(sock, sequence: int, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(3, "little") + bytes((sequence & 0xFF,)) + payload)


def check_token(token: str, host: str, port: int, user: str, region: str, credentials: dict,
                now: datetime.datetime | None = None) -> str | None:
    """None when `token` is a valid RDS IAM token for host:port and user; else what is wrong."""
    endpoint, _, query = token.partition("/?")
    if endpoint != f"{host}:{port}":
        return f"token is for {endpoint}, not {host}:{port}"
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature", None)
    if params.get("Action") != "connect" or params.get("DBUser") != user:
        return "not a connect token for this user"
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or params.get("X-Amz-SignedHeaders") != "host":
        return "unexpected signing algorithm or headers"
    access_key, _, scope = params.get("X-Amz-Credential", "").partition("/")
    date, scope_region, service, terminator = (scope.split("/") + ["", "", "", ""])[:4]
    if access_key != credentials["AccessKeyId"] \
            or (scope_region, service, terminator) != (region, "rds-db", "aws4_request"):
        return f"credential scope {params.get('X-Amz-Credential')!r} is not this role's for rds-db in {region}"
    if params.get("X-Amz-Security-Token") != credentials["SessionToken"]:
        return "session token missing or not STS's"
    signed_at = datetime.datetime.strptime(params.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    age = (now - signed_at).total_seconds()
    if signed_at.strftime("%Y%m%d") != date or not -300 <= age <= int(params.get("X-Amz-Expires", 0)):
        return "token expired or not yet valid"
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                               for k, v in sorted(params.items()))
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{endpoint}", "", "host", EMPTY_PAYLOAD_SHA256])
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + credentials["SecretAccessKey"]).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest(), signature or ""):
        return "signature does not match"
    return None


class RdsIamFront:
    """Listens on 127.0.0.1; `host` is the name clients must use (and the token must name)."""

    def __init__(self, backend, certfile: str, keyfile: str, credentials: dict, region: str, host: str = "localhost"):
        self.backend = backend  # tests.mariadb.MariaDB
        self.credentials = credentials
        self.region = region
        self.host = host
        self.checked: list[tuple[str, str | None]] = []  # (token, problem or None)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(certfile, keyfile)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        server = None
        try:
            server = socket.create_connection((self.backend.host, self.backend.port))
            _, greeting_payload = read_packet(server)
            backend = handshake.parse_greeting(greeting_payload)
            # RDS greets with TLS on offer and native password; our own scramble toward the client
            write_packet(client, 0, handshake.build_greeting(backend._replace(
                capabilities=backend.capabilities | CLIENT.SSL, scramble=b"r" * 20,
                auth_plugin=handshake.NATIVE_PASSWORD)))
            sequence, payload = read_packet(client)
            if not handshake.parse_handshake_response(payload).ssl_request:
                write_packet(client, sequence + 1, messages.err_payload(1045, "28000", "RDS IAM needs TLS"))
                return
            client = self._tls.wrap_socket(client, server_side=True)
            sequence, payload = read_packet(client)
            response = handshake.parse_handshake_response(payload)
            write_packet(client, sequence + 1, handshake.build_auth_switch(handshake.CLEAR_PASSWORD, b""))
            sequence, token = read_packet(client)
            token = token.rstrip(b"\0").decode()
            problem = check_token(token, self.host, self.port, response.user, self.region, self.credentials)
            self.checked.append((token, problem))
            if problem is not None:
                write_packet(client, sequence + 1, messages.err_payload(
                    1045, "28000", f"Access denied for user '{response.user}' (IAM: {problem})"))
                return
            capabilities = (response.capabilities & ~CLIENT.SSL) & (backend.capabilities | CLIENT.LONG_PASSWORD)
            write_packet(server, 1, handshake.build_handshake_response(response._replace(
                capabilities=capabilities, auth_plugin=handshake.NATIVE_PASSWORD,
                auth_response=native_proof(self.backend.password, backend.scramble))))
            _, reply = read_packet(server)
            write_packet(client, sequence + 1, reply)
            if not messages.is_ok(reply):
                return
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
            self._pipe(client, server)
        except (OSError, ConnectionError, ssl.SSLError):
            pass
        finally:
            for sock in (client, server):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass

    @staticmethod
    def _pipe(source, target):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self._listener.close()
