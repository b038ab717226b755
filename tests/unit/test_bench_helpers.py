"""The benchmark's own helpers (bench/stats.py, bench/rawclient.py): no servers, no processes."""

from __future__ import annotations

import math
import socket

import pytest

from bench import stats
from bench.rawclient import Incomplete, RawQuery, com_query, walk_reply


def _packet(payload: bytes, seq: int) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq,)) + payload


def _eof(seq: int, status: int = 0x0002) -> bytes:
    return _packet(b"\xfe\x00\x00" + status.to_bytes(2, "little"), seq)


def _select1_reply(status: int = 0x0002) -> bytes:
    column = (b"\x03def" + b"\x00" * 3 + b"\x011" + b"\x00" + b"\x0c" + b"\x3f\x00" + b"\x01\x00\x00\x00"
              + b"\x08\x81\x00\x00\x00\x00")
    return _packet(b"\x01", 1) + _packet(column, 2) + _eof(3) + _packet(b"\x011", 4) + _eof(5, status)


class TestStats:
    def test_percentile_interpolates_between_ranks(self):
        # given 1..5, when asking for the median and quartiles, then they are the usual values
        values = [5, 1, 4, 2, 3]
        assert stats.percentile(values, 50) == 3
        assert stats.percentile(values, 25) == 2
        assert stats.percentile(values, 90) == pytest.approx(4.6)

    def test_percentile_of_nothing_is_nan(self):
        assert math.isnan(stats.percentile([], 50))

    def test_blocks_are_contiguous_and_cover_every_sample_once(self):
        values = list(range(23))
        parts = stats.blocks(values, 5)
        assert len(parts) == 5
        assert [v for part in parts for v in part] == values

    def test_ratio_is_computed_per_time_block(self):
        # given a numerator that doubles half-way, then the per-block ratios show the drift
        slow = [1.0] * 50 + [2.0] * 50
        ref = [1.0] * 100
        r = stats.ratio(slow, ref)
        assert r["lo"] == 1.0 and r["hi"] == 2.0

    def test_verdict_flags_a_limit_inside_the_noise(self):
        assert stats.verdict(1.05, 1.10, higher_is_better=False) == "met"
        assert stats.verdict(1.12, 1.10, higher_is_better=False) == "not met"
        assert stats.verdict(1.12, 1.10, False, lo=1.0, hi=1.2) == "not met (within noise)"
        assert stats.verdict(0.95, 0.9, higher_is_better=True) == "met"


class TestRawClient:
    def test_com_query_frames_the_statement(self):
        assert com_query("SELECT 1") == b"\x09\x00\x00\x00\x03SELECT 1"

    def test_walk_reply_counts_rows_of_a_complete_result_set(self):
        info = walk_reply(_select1_reply())
        assert info == {"columns": 1, "rows": 1, "bytes": len(_select1_reply())}

    def test_walk_reply_says_incomplete_until_the_final_eof(self):
        reply = _select1_reply()
        for cut in (3, 10, len(reply) - 9, len(reply) - 1):
            with pytest.raises(Incomplete):
                walk_reply(reply[:cut])

    def test_walk_reply_rejects_a_multi_result_reply(self):
        with pytest.raises(ValueError, match="more results"):
            walk_reply(_select1_reply(status=0x0002 | 0x0008))

    def test_raw_query_reads_exactly_the_calibrated_length(self):
        # given a fake server answering every query with the same reply, split across two writes
        server, client = socket.socketpair()
        reply = _select1_reply()
        try:
            query = RawQuery(client, "SELECT 1", buffer_size=1 << 12)

            def answer():
                assert server.recv(100) == com_query("SELECT 1")
                server.sendall(reply[:7])
                server.sendall(reply[7:])

            import threading
            for _ in range(2):
                t = threading.Thread(target=answer)
                t.start()
                if not query.expected:
                    assert query.calibrate()["rows"] == 1
                else:
                    assert query.run() > 0
                t.join()
            assert query.expected == len(reply)
        finally:
            server.close()
            client.close()
