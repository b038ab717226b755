"""A throwaway certificate authority and a server certificate it signed, made with openssl: what a
database requiring verified TLS (RDS with its CA bundle) looks like to a client.

    paths = make_ca(directory, ips=["127.0.0.1", "10.0.0.5"])   # ca.pem, server.pem, server.key
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path          # the CA certificate: what clients verify against (DB_SSL_CA, DBKEEPER_DB_TLS_CA)
    server_cert: Path
    server_key: Path

    def mariadb_args(self) -> list[str]:
        return [f"--ssl-ca={self.ca}", f"--ssl-cert={self.server_cert}", f"--ssl-key={self.server_key}"]


def make_ca(directory: str | Path, ips: list[str], days: int = 2) -> Certificates:
    """A CA and a server certificate valid for `ips` (IP subject alternative names) and localhost."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()[-300:]}")

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", "/CN=dbkeeper throwaway CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ips[0]}", "-keyout", "server.key",
            "-out", "server.csr")
    names = ",".join([f"IP:{ip}" for ip in ips] + ["DNS:localhost"])
    (directory / "san.ext").write_text(f"subjectAltName={names}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", str(days), "-extfile", "san.ext", "-out", "server.pem")
    (directory / "ca.key").unlink()  # nothing is ever signed again
    return Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
