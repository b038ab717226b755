"""The benchmark's own helpers (bench/stats.py, bench/rawclient.py, bench/cpushare.py's arithmetic,
bench/report.py's verdicts): no servers, no processes."""

from __future__ import annotations

import math
import socket

import pytest

from bench import cpushare, report, stats
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


class TestCpuShare:
    def test_a_function_gets_its_memory_share_of_one_vcpu_per_1769_mb(self):
        assert cpushare.quota_us(128) == 7236  # 100 ms x 128 / 1769
        assert cpushare.quota_us(1769) == 100_000
        assert cpushare.quota_us(3538) == 200_000  # two vCPUs
        assert cpushare.quota_us(1) == 1000  # the kernel refuses a quota under 1 ms


def _summary(values):
    return stats.summary(values)


def _connect_results(direct_connect_ms: float, dbk_connect_ms: float) -> dict:
    def variant(connect_ms, wall_ms):
        connect = [connect_ms * 1000] * 10
        wall = [wall_ms * 1000] * 10
        return {"wall_us": _summary(wall), "connect_us": _summary(connect), "cpu_us": _summary([200.0] * 10),
                "samples_wall_us": wall, "samples_connect_us": connect, "tls_fraction": 0.0}
    return {"net_rtt_ms": 1.0, "clients": {"1.1.1": "1.1.1"}, "variants": {
        "1.1.1/defaults/direct_tcp_tlsdb_net": variant(direct_connect_ms, direct_connect_ms + 1),
        "1.1.1/defaults/dbk_tcp_tlsdb_net": variant(dbk_connect_ms, dbk_connect_ms + 1)}}


def _tlsreq_results(direct_ms, dbk_ms, direct_share_ms, dbk_share_ms) -> dict:
    def full(ms):
        wall = [ms * 1000] * 20
        return {"wall_us": _summary(wall), "connect_us": _summary(wall), "cpu_us": _summary([300.0] * 20),
                "samples_wall_us": wall, "tls_fraction": 1.0}

    def share(ms):
        wall = [ms * 1000] * 19 + [ms * 10_000]
        return {"wall_us": _summary(wall), "samples_wall_us": wall, "cycles_per_s": 1000 / ms,
                "cpu_us_per_cycle": 500.0, "throttled_periods": 3, "periods": 4, "throttled_ms": 100.0}
    return {"net_rtt_ms": 1.0,
            "full_cpu": {"extension_cpu_us_per_connect_cycle": 400.0,
                         "paths": {"direct_tlsreq_net": full(direct_ms), "dbk_tlsreq_net": full(dbk_ms)}},
            "cpu_share": {"memory_mb": 128, "paths": {"direct_tlsreq_net": share(direct_share_ms),
                                                      "dbk_tlsreq_net": share(dbk_share_ms)}}}


def _row(rows, starts):
    (row,) = [r for r in rows if r["target"].startswith(starts)]
    return row


class TestTargets:
    def test_connect_alone_must_be_ten_times_faster_across_the_network(self):
        met = report.targets({"connect": _connect_results(6.0, 0.5)})
        assert _row(met, "connect() alone across 1 ms RTT")["status"] == "met"
        missed = report.targets({"connect": _connect_results(6.0, 0.7)})
        row = _row(missed, "connect() alone across 1 ms RTT")
        assert row["status"] == "not met" and row["ratio"] == pytest.approx(6.0 / 0.7)

    def test_tls_required_must_be_five_times_faster_at_full_cpu_and_no_slower_at_128_mb(self):
        rows = report.targets({"tlsreq": _tlsreq_results(11.0, 2.0, 20.0, 20.0)})
        assert _row(rows, "connect+SELECT 1+close across 1 ms RTT, DB requires TLS")["status"] == "met"
        share = _row(rows, "the same at a 128 MB CPU share")
        assert share["status"].startswith("met") and share["ratio"] == pytest.approx(1.0)  # equal is no slower
        assert "p99" in share["value"]
        rows = report.targets({"tlsreq": _tlsreq_results(9.0, 2.0, 20.0, 21.0)})
        assert _row(rows, "connect+SELECT 1+close across 1 ms RTT, DB requires TLS")["status"] == "not met"
        assert _row(rows, "the same at a 128 MB CPU share")["status"] == "not met"

    def test_without_a_cpu_quota_the_128_mb_target_says_not_measured(self):
        results = _tlsreq_results(10.0, 2.0, 20.0, 20.0)
        del results["cpu_share"]
        results["cpu_share_unavailable"] = "a CPU quota needs root"
        row = _row(report.targets({"tlsreq": results}), "the same at a 128 MB CPU share")
        assert row["status"] == "not measured" and row["note"] == "a CPU quota needs root"


def _layer_tree(root):
    """The two files that make a directory an unpacked dbkeeper layer tree for the bench."""
    launcher = root / "extensions" / "dbkeeper"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    main = root / "dbkeeper" / "lib" / "dbkeeper" / "main.py"
    main.parent.mkdir(parents=True)
    main.write_text("")
    return root


class TestBaselineLayerArguments:
    def test_a_layer_tree_is_accepted_and_the_run_leaves_results_md_alone(self, tmp_path):
        from bench.__main__ import parse_args, writes_results_md
        tree = _layer_tree(tmp_path / "layer")
        args = parse_args(["--only", "latency,cpu,connect", "--baseline-layer", str(tree)])
        assert args.baseline_layer == tree.resolve()
        assert args.phases == ["latency", "cpu", "connect"]
        assert not writes_results_md(parse_args(["--baseline-layer", str(tree)]))  # even as a full run

    def test_without_the_flag_a_full_run_still_rewrites_results_md(self):
        from bench.__main__ import parse_args, writes_results_md
        args = parse_args([])
        assert args.baseline_layer is None and writes_results_md(args)
        assert not writes_results_md(parse_args(["--quick"]))
        assert not writes_results_md(parse_args(["--variant-env", "A=1"]))

    def test_a_directory_that_is_no_layer_or_phases_that_never_measure_it_are_refused(self, tmp_path, capsys):
        from bench.__main__ import parse_args
        with pytest.raises(SystemExit):
            parse_args(["--baseline-layer", str(tmp_path)])
        assert "no executable extensions/dbkeeper" in capsys.readouterr().err
        tree = _layer_tree(tmp_path / "layer")
        with pytest.raises(SystemExit):
            parse_args(["--only", "coldstart", "--baseline-layer", str(tree)])
        assert "latency, cpu and connect" in capsys.readouterr().err


def _ab_results(new_us: float, baseline_us: float, new_cpu_us: float, baseline_cpu_us: float,
                new_connect_ms: float, baseline_connect_ms: float) -> dict:
    """Latency, cpu and connect results where this build (dbk_*) and the baseline (dbkb_*) take fixed times."""
    def connect(ms):
        wall = [ms * 1000] * 10
        return {"wall_us": _summary(wall), "samples_wall_us": wall}
    lat = {step: {"dbk_tcp": [new_us] * 50, "dbkb_tcp": [baseline_us] * 50, "socat_tcp": [1.0] * 50}
           for step in ("select1_pymysql", "select1_raw", "select1_idle")}
    return {"layer_fingerprint": "new", "baseline_layer": {"path": "/old/layer", "fingerprint": "old"},
            "latency": {"samples_us": lat},
            "cpu": {"samples": {"select1_us": {"dbk_tcp": [new_cpu_us] * 10, "dbkb_tcp": [baseline_cpu_us] * 10},
                                "select1_idle_us": {"dbk_tcp": [new_cpu_us] * 10, "dbkb_tcp": [baseline_cpu_us] * 10},
                                "mb1_ms": {"dbk_tcp": [1.0] * 10, "dbkb_tcp": [1.0] * 10}}},
            "connect": {"net_rtt_ms": 1.0, "extension_cpu_us_per_connect_cycle": 1000.0,
                        "baseline_extension_cpu_us_per_connect_cycle": 900.0,
                        "variants": {"1.1.1/defaults/dbk_tcp": connect(new_connect_ms),
                                     "1.1.1/defaults/dbkb_tcp": connect(baseline_connect_ms)}}}


class TestBaselineComparison:
    def test_this_build_may_cost_at_most_five_percent_more_than_the_baseline(self):
        rows = report.baseline_rows(_ab_results(104.0, 100.0, 50.0, 40.0, 1.0, 1.0))
        select1 = next(r for r in rows if r["what"] == "SELECT 1 p50, PyMySQL, TCP")
        assert select1["ratio"] == pytest.approx(1.04) and select1["status"] == "met"
        for start in ("extension CPU per SELECT 1 (", "extension CPU per SELECT 1 after 1 ms idle"):
            cpu = next(r for r in rows if r["what"].startswith(start))
            assert cpu["ratio"] == pytest.approx(1.25) and cpu["status"] == "not met"
        connect = next(r for r in rows if "PyMySQL 1.1.1 defaults, TCP" in r["what"])
        assert connect["new"] == pytest.approx(1.0) and connect["status"] == "met"  # unchanged is fine
        idle = next(r for r in rows if "after 1 ms idle" in r["what"])
        assert idle["limit"] is None and idle["status"] == "context"

    def test_the_table_names_both_layers_and_only_rows_measured_on_both(self):
        results = _ab_results(100.0, 100.0, 40.0, 40.0, 1.0, 2.0)
        del results["cpu"]
        table = report.baseline_table(results)
        assert "/old/layer (old)" in table and "extension CPU per SELECT 1" not in table
        row = "| connect+SELECT 1+close per invocation, PyMySQL 1.1.1 defaults, TCP | 1.00 ms | 2.00 ms | 0.500 |"
        assert row in table
        assert "### Baseline layer comparison" in report.render({"baseline_layer": results["baseline_layer"]})
        assert "Baseline layer" not in report.render({})
