"""The benchmark's emulated network (bench/netdelay.py), in front of a plain echo server: bytes
arrive whole and in order, each crossing takes the delay, a FIN comes through."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RTT_MS = 20.0


@pytest.fixture
def echo_server():
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
    listener.close()
    server.join(5)


@pytest.fixture
def delay_line(echo_server, free_port):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.netdelay", str(port), str(echo_server), str(RTT_MS)],
                            cwd=str(REPO), stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "ready"
    yield port
    proc.kill()
    proc.wait()


def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def test_a_round_trip_across_the_delay_line_takes_its_rtt_and_the_first_one_a_handshake_more(delay_line):
    rtt = RTT_MS / 1000
    with socket.create_connection(("127.0.0.1", delay_line), timeout=5) as sock:
        # when the client talks at once, then its first answer comes after the TCP handshake's time too
        started = time.perf_counter()
        sock.sendall(b"hello")
        assert read_exactly(sock, 5) == b"hello"
        assert time.perf_counter() - started >= 2 * rtt
        # and every later round trip takes one RTT
        started = time.perf_counter()
        sock.sendall(b"again")
        assert read_exactly(sock, 5) == b"again"
        assert time.perf_counter() - started >= rtt


def test_a_large_stream_arrives_whole_and_in_order_and_the_fin_comes_through(delay_line):
    payload = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", delay_line), timeout=5) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        assert read_exactly(sock, len(payload)) == payload
        assert sock.recv(1) == b""  # the echo server saw our FIN and closed: its FIN reached us
        sender.join()
