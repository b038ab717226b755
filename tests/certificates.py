"""Throwaway certificates for the TLS tests, made with openssl: a private CA, a server certificate
it signed, and a second, unrelated CA (to show that verification refuses the wrong one)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_test_certificates(directory: Path, server_name: str, subject_alt_names: str) -> Path:
    """Writes ca.pem, server.pem + server.key (CN=server_name, the given subjectAltName) and
    other.pem into `directory`; returns it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dbkeeper test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={server_name}", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text(f"subjectAltName={subject_alt_names}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "server.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=some other CA",
            "-keyout", "other.key", "-out", "other.pem")
    return directory
