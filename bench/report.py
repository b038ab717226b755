"""Tables, target verdicts, the JSON file and the generated part of bench/RESULTS.md."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from .stats import percentile, ratio, verdict

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
RESULTS_MD = BENCH / "RESULTS.md"
BEGIN, END = "<!-- generated:begin (python -m bench rewrites this part) -->", "<!-- generated:end -->"

LABELS = {
    "direct_tcp": "direct TCP 127.0.0.1",
    "direct_unix": "direct Unix socket",
    "dbk_tcp": "dbkeeper TCP",
    "dbk_unix": "dbkeeper Unix socket",
    "socat_tcp": "socat TCP->TCP (nodelay)",
    "socat_unix": "socat UNIX->TCP (nodelay)",
    "uvloop_tcp": "bare uvloop Protocol relay TCP (bench/minirelay.py)",
    "dbkv_tcp": "dbkeeper TCP, variant env (A/B)",
    "dbkb_tcp": "dbkeeper TCP, baseline layer (A/B)",
    "dbkb_unix": "dbkeeper Unix socket, baseline layer (A/B)",
    "dbkb_tcp_tlsdb_net": "dbkeeper TCP, baseline layer, TLS upstream across the emulated network",
    "direct_tcp_tlsdb": "direct TCP, DB offers TLS",
    "dbk_tcp_tlsdb": "dbkeeper TCP, TLS upstream",
    "direct_tcp_tlsdb_net": "direct TCP across the emulated network, DB offers TLS",
    "dbk_tcp_tlsdb_net": "dbkeeper TCP, TLS upstream across the emulated network",
    "direct_tlsreq_net": "direct, verified TLS, across the emulated network",
    "dbk_tlsreq_net": "dbkeeper TCP, verified TLS upstream (required) across the emulated network",
    "dbk_tlsreq_net_tlsargs": "the same, the client keeping the direct path's TLS settings",
}


# --------------------------------------------------------------------------- machine

def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    socat = shutil.which("socat")
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "python": platform.python_version(), "python_path": os.path.realpath(os.sys.executable),
        "socat": _cmd([socat, "-V"]).splitlines()[1].strip() if socat else None,
        "loadavg": os.getloadavg(),
    }


# --------------------------------------------------------------------------- targets

def _p50(summary: dict) -> float:
    return summary["p50"]


def targets(results: dict) -> list[dict]:
    rows = []
    lat = results.get("latency")
    if lat:
        s = lat["samples_us"]["select1_pymysql"]
        r = ratio(s["dbk_tcp"], s["socat_tcp"])
        note = ""
        if "uvloop_tcp" in s:
            floor = ratio(s["uvloop_tcp"], s["socat_tcp"])["ratio"]
            note = f"bare uvloop relay: {floor:.2f} x socat (the floor for a Python relay)"
        idle = lat["samples_us"].get("select1_idle")
        if idle:
            after_idle = ratio(idle["dbk_tcp"], idle["socat_tcp"])["ratio"]
            note += f"; after 1 ms idle (raw): dbkeeper {after_idle:.2f} x socat"
            if "uvloop_tcp" in idle:
                note += f", bare uvloop {ratio(idle['uvloop_tcp'], idle['socat_tcp'])['ratio']:.2f} x"
        rows.append(dict(target="SELECT 1 p50, dbkeeper TCP <= 1.10 x socat",
                         value=f"{percentile(s['dbk_tcp'], 50):.0f} µs vs {percentile(s['socat_tcp'], 50):.0f} µs",
                         ratio=r["ratio"], limit=1.10, spread=(r["lo"], r["hi"]),
                         status=verdict(r["ratio"], 1.10, False, r["lo"], r["hi"]), note=note))
        r = ratio(s["dbk_unix"], s["socat_unix"])
        direct_ratio = ratio(s["dbk_unix"], s["direct_tcp"])["ratio"]
        rows.append(dict(target="SELECT 1 p50, dbkeeper Unix socket <= 1.05 x socat UNIX->TCP",
                         value=f"{percentile(s['dbk_unix'], 50):.0f} µs vs {percentile(s['socat_unix'], 50):.0f} µs",
                         ratio=r["ratio"], limit=1.05, spread=(r["lo"], r["hi"]),
                         status=verdict(r["ratio"], 1.05, False, r["lo"], r["hi"]),
                         note=f"{direct_ratio:.2f} x direct TCP (an extra hop; the DB is local here)"))
        m = lat["samples_us"]["mb1_raw"]
        r = ratio(m["socat_tcp"], m["dbk_tcp"])  # throughput ratio = inverse time ratio
        mb = lat["mb1_bytes"] / 1e6
        rows.append(dict(target="1 MB result, dbkeeper TCP >= 0.9 x socat throughput",
                         value=f"{mb / percentile(m['dbk_tcp'], 50) * 1e6:.0f} vs "
                               f"{mb / percentile(m['socat_tcp'], 50) * 1e6:.0f} MB/s",
                         ratio=r["ratio"], limit=0.90, spread=(r["lo"], r["hi"]),
                         status=verdict(r["ratio"], 0.90, True, r["lo"], r["hi"]),
                         note="socat as given relays in 8 KiB reads (its default -b 8192)"))
    cpu = results.get("cpu")
    if cpu:
        c = cpu["per_query"]["select1_us"]["dbk_tcp"]
        refs = cpu["per_query"]["select1_us"]
        note = ", ".join(f"{n}: {refs[n]['p50']:.1f} µs" for n in ("socat_tcp", "uvloop_tcp") if n in refs)
        rows.append(dict(target="extension CPU <= 45 µs per SELECT 1 (TCP)", value=f"{c['p50']:.1f} µs",
                         ratio=c["p50"] / 45, limit=1.0, spread=(c["p50_lo"] / 45, c["p50_hi"] / 45),
                         status=verdict(c["p50"], 45, False, c["p50_lo"], c["p50_hi"]), note=note))
    con = results.get("connect")
    if con and con.get("net_rtt_ms"):
        v = con["variants"]
        a, b = v.get("1.1.1/defaults/direct_tcp_tlsdb_net"), v.get("1.1.1/defaults/dbk_tcp_tlsdb_net")
        if a and b and "samples_connect_us" in a:
            r = ratio(a["samples_connect_us"], b["samples_connect_us"])
            whole = ratio(a["samples_wall_us"], b["samples_wall_us"])["ratio"]
            rows.append(dict(
                target=f"connect() alone across {con['net_rtt_ms']:g} ms RTT: dbkeeper >= 10x faster than direct "
                       "(PyMySQL 1.1.1)",
                value=f"{a['connect_us']['p50'] / 1000:.2f} ms vs {b['connect_us']['p50'] / 1000:.2f} ms",
                ratio=r["ratio"], limit=10.0, spread=(r["lo"], r["hi"]),
                status=verdict(r["ratio"], 10.0, True, r["lo"], r["hi"]),
                note=f"DB offers TLS, the driver's defaults (no TLS); with SELECT 1 + close: {whole:.1f}x"))
    tls = results.get("tlsreq")
    if tls:
        full = tls["full_cpu"]["paths"]
        a, b = full.get("direct_tlsreq_net"), full.get("dbk_tlsreq_net")
        if a and b:
            r = ratio(a["samples_wall_us"], b["samples_wall_us"])
            alone = a["connect_us"]["p50"] / b["connect_us"]["p50"]
            kept = full.get("dbk_tlsreq_net_tlsargs")
            kept_note = (f"; a client keeping its TLS settings: {a['wall_us']['p50'] / kept['wall_us']['p50']:.1f}x "
                         f"({kept['cpu_us']['p50'] / 1000:.2f} ms client CPU)") if kept else ""
            rows.append(dict(
                target=f"connect+SELECT 1+close across {tls['net_rtt_ms']:g} ms RTT, DB requires TLS: dbkeeper >= 5x "
                       "faster than the driver direct with verified TLS (PyMySQL 1.1.1)",
                value=f"{a['wall_us']['p50'] / 1000:.2f} ms vs {b['wall_us']['p50'] / 1000:.2f} ms",
                ratio=r["ratio"], limit=5.0, spread=(r["lo"], r["hi"]),
                status=verdict(r["ratio"], 5.0, True, r["lo"], r["hi"]),
                note=f"connect() alone {alone:.1f}x; client CPU {a['cpu_us']['p50'] / 1000:.2f} vs "
                     f"{b['cpu_us']['p50'] / 1000:.2f} ms, extension CPU per cycle "
                     f"{tls['full_cpu']['extension_cpu_us_per_connect_cycle'] / 1000:.2f} ms{kept_note}"))
        share = tls.get("cpu_share")
        if share:
            a, b = share["paths"].get("direct_tlsreq_net", {}), share["paths"].get("dbk_tlsreq_net", {})
            if a.get("wall_us") and b.get("wall_us"):
                r = ratio(a["samples_wall_us"], b["samples_wall_us"])
                kept = share["paths"].get("dbk_tlsreq_net_tlsargs", {})
                kept_note = (f"; a client keeping its TLS settings: p50 {kept['wall_us']['p50'] / 1000:.1f} ms "
                             f"({a['wall_us']['p50'] / kept['wall_us']['p50']:.2f}x), p99 "
                             f"{kept['wall_us']['p99'] / 1000:.0f} ms, {kept['cpu_us_per_cycle'] / 1000:.2f} ms CPU"
                             ) if kept.get("wall_us") else ""
                rows.append(dict(
                    target=f"the same at a {share['memory_mb']} MB CPU share (client and extension in one CFS quota): "
                           "dbkeeper p50 no slower than direct",
                    value=f"p50 {a['wall_us']['p50'] / 1000:.1f} vs {b['wall_us']['p50'] / 1000:.1f} ms, "
                          f"p99 {a['wall_us']['p99'] / 1000:.0f} vs {b['wall_us']['p99'] / 1000:.0f} ms",
                    ratio=r["ratio"], limit=1.0, spread=(r["lo"], r["hi"]),
                    status=verdict(r["ratio"], 1.0, True, r["lo"], r["hi"]),
                    note=f"p99 ratio {a['wall_us']['p99'] / b['wall_us']['p99']:.2f}; invocations/s "
                         f"{a['cycles_per_s']:.1f} vs {b['cycles_per_s']:.1f}; CPU per invocation "
                         f"{a['cpu_us_per_cycle'] / 1000:.2f} vs {b['cpu_us_per_cycle'] / 1000:.2f} ms "
                         f"(dbkeeper: client + extension){kept_note}"))
        elif tls.get("cpu_share_unavailable"):
            rows.append(dict(target="the same at a 128 MB CPU share: dbkeeper p50 no slower than direct",
                             value="not measured", ratio=math.nan, limit=1.0, spread=None,
                             status="not measured", note=tls["cpu_share_unavailable"]))
    cold = results.get("coldstart")
    if cold:
        s = cold["summary"]["spawn_to_registered_ms"]
        alt = cold.get("alternative", {})
        pyc = alt.get("summary", {})
        note = ""
        if pyc.get("spawn_to_registered_ms", {}).get("n"):
            note = (f"{alt['label'].replace('_', ' ')}: {pyc['spawn_to_registered_ms']['p50']:.1f} ms; "
                    f"spawn -> upstream ready {cold['summary']['spawn_to_upstream_ready_ms']['p50']:.0f} -> "
                    f"{pyc['spawn_to_upstream_ready_ms']['p50']:.0f} ms, "
                    f"CPU {cold['summary']['cpu_at_ready_ms']['p50']:.0f} -> {pyc['cpu_at_ready_ms']['p50']:.0f} ms")
        rows.append(dict(target="extension start -> registered <= 60 ms wall",
                         value=f"{s['p50']:.1f} ms (min {s['min']:.1f})",
                         ratio=s["p50"] / 60, limit=1.0, spread=(s["min"] / 60, s["max"] / 60) if "max" in s else None,
                         status=verdict(s["p50"], 60, False), note=note))
        hwm = cold["summary"]["vm_hwm_kb"]["p50"] / 1024
        loaded = results.get("rss_after_load_kb", {}).get("VmHWM")
        worst = max(hwm, loaded / 1024 if loaded else 0)
        value = f"peak {hwm:.1f} MB at ready" + (f", {loaded / 1024:.1f} MB after the bench load" if loaded else "")
        rows.append(dict(target="RSS <= 30 MB (VmHWM)", value=value, ratio=worst / 30, limit=1.0, spread=None,
                         status=verdict(worst, 30, False)))
        if "shutdown_to_server_closed_ms" in cold["summary"] and cold["summary"]["shutdown_to_server_closed_ms"]["n"]:
            s = cold["summary"]["shutdown_to_server_closed_ms"]
            worst = max(r.get("shutdown_to_server_closed_ms") or 0 for r in cold["runs"])
            rows.append(dict(target="SHUTDOWN -> upstream closed (server side) <= 20 ms",
                             value=f"{s['p50']:.2f} ms (max {worst:.2f})",
                             ratio=s["p50"] / 20, limit=1.0, spread=(s["min"] / 20, worst / 20),
                             status=verdict(s["p50"], 20, False)))
    return rows


# --------------------------------------------------------------------------- tables

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x, digits=0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def latency_table(results: dict) -> str:
    lat, cpu = results["latency"], results.get("cpu")
    sm = lat["summary"]
    direct = sm["select1_pymysql"]["direct_tcp"]["p50"]
    mb = lat["mb1_bytes"] / 1e6
    rows = []
    idle = sm.get("select1_idle", {})
    for name in sm["select1_pymysql"]:
        p, r, m = sm["select1_pymysql"][name], sm["select1_raw"][name], sm["mb1_raw"][name]
        i = idle.get(name)
        cpu_s = cpu_m = "—"
        if cpu and name in cpu["per_query"]["select1_us"]:
            c = cpu["per_query"]["select1_us"][name]
            cpu_s = f"{c['p50']:.1f} ({c['p50_lo']:.0f}–{c['p50_hi']:.0f})"
            c = cpu["per_query"].get("select1_idle_us", {}).get(name)
            if c:
                cpu_s += f"; {c['p50']:.1f} ({c['p50_lo']:.0f}–{c['p50_hi']:.0f})"
            c = cpu["per_query"]["mb1_ms"][name]
            cpu_m = f"{c['p50']:.2f} ({c['p50_lo']:.2f}–{c['p50_hi']:.2f})"
            f = cpu.get("minor_faults_per_query", {}).get("mb1", {}).get(name)
            if f:
                cpu_m += f"; {f['p50']:.0f}"
        rows.append([
            LABELS.get(name, name),
            f"{p['p50']:.0f} ({p['p50_lo']:.0f}–{p['p50_hi']:.0f}) / {p['p90']:.0f} / {p['p99']:.0f}",
            f"{p['p50'] / direct:.2f}",
            f"{r['p50']:.0f} ({r['p50_lo']:.0f}–{r['p50_hi']:.0f}) / {r['p99']:.0f}",
            f"{i['p50']:.0f} ({i['p50_lo']:.0f}–{i['p50_hi']:.0f})" if i else "—",
            f"{m['p50'] / 1000:.2f} ms ({mb / m['p50'] * 1e6:.0f} MB/s) / {m['p99'] / 1000:.2f}",
            cpu_s, cpu_m,
        ])
    header = ["path", "SELECT 1 PyMySQL p50 (block range) / p90 / p99 µs", "x direct",
              "SELECT 1 raw p50 (range) / p99 µs", "SELECT 1 raw after 1 ms idle p50 (range) µs",
              f"{mb:.2f} MB / 10k rows raw p50 / p99",
              "relay CPU µs per SELECT 1 p50 (range); after 1 ms idle",
              "relay CPU ms per 1 MB p50 (range); page faults per 1 MB"]
    return _table(header, rows)


def connect_table(results: dict) -> str:
    con = results["connect"]
    v = con["variants"]
    paths = [p for p in ("direct_tcp", "direct_tcp_tlsdb", "dbk_tcp", "dbk_unix", "dbk_tcp_tlsdb",
                         "direct_tcp_tlsdb_net", "dbk_tcp_tlsdb_net", "dbkb_tcp", "dbkb_unix",
                         "dbkb_tcp_tlsdb_net")
             if any(x["path"] == p for x in v.values())]
    ratios = [(d, k, label) for d, k, label in (
        ("direct_tcp_tlsdb", "dbk_tcp", "direct (DB offers TLS) / dbkeeper TCP"),
        ("direct_tcp_tlsdb_net", "dbk_tcp_tlsdb_net", "the same across the emulated network"))
        if d in paths and k in paths]
    rows = []
    for client in con["clients"]:
        for mode in ("defaults", "ssl_disabled"):
            row = [f"PyMySQL {con['clients'][client]} {mode}"]
            for path in paths:
                x = v.get(f"{client}/{mode}/{path}")
                if not x:
                    row.append("—")
                    continue
                tls = " TLS" if x["tls_fraction"] > 0.5 else ""
                alone = f"; {x['connect_us']['p50'] / 1000:.2f}" if "connect_us" in x else ""
                row.append(f"{x['wall_us']['p50'] / 1000:.2f} ({x['cpu_us']['p50'] / 1000:.2f}{alone}){tls}")
            for direct, via, _ in ratios:
                d, k = v.get(f"{client}/{mode}/{direct}"), v.get(f"{client}/{mode}/{via}")
                row.append(f"{d['wall_us']['p50'] / k['wall_us']['p50']:.2f}x" if d and k else "—")
            rows.append(row)
    header = ["client / mode"] + [LABELS.get(p, p) for p in paths] + [label for _, _, label in ratios]
    network = ""
    if "direct_tcp_tlsdb_net" in paths:
        network = (f" Emulated network: {con.get('net_rtt_ms', 0):g} ms RTT (bench/netdelay.py, user space: "
                   "connect() + greeting = 2 RTT, each later round trip 1 RTT).")
    return ("wall ms p50 (client CPU ms p50; connect() alone ms p50); TLS = the client negotiated TLS. "
            "Extension CPU per connect cycle "
            f"(handshake + relayed queries + COM_QUIT + background reset): "
            f"{con.get('extension_cpu_us_per_connect_cycle', math.nan):.0f} µs.{network}\n\n" + _table(header, rows))


def tlsreq_table(results: dict) -> str:
    tls = results["tlsreq"]
    full = tls["full_cpu"]
    share = tls.get("cpu_share") or {}
    head = (f"DB requires TLS (require_secure_transport; certificate from a throwaway CA), "
            f"{tls['net_rtt_ms']:g} ms RTT "
            "(bench/netdelay.py); PyMySQL 1.1.1. Direct: ssl_ca + ssl_verify_cert + ssl_verify_identity. dbkeeper: "
            "the driver's defaults to 127.0.0.1 (or, last row, the direct path's TLS settings kept: PyMySQL builds "
            "its TLS context, then connects in plain text), upstream DBKEEPER_DB_TLS=required with the CA. "
            f"Full CPU: {full['iterations']} iterations, interleaved.")
    if share:
        head += (f" CPU share: {share['memory_mb']} MB = CFS quota {share['quota_us']} µs per {share['period_us']} µs "
                 f"({share['cgroup']} cgroup) for each function (direct: its client; dbkeeper: its client and its "
                 f"extension), all invoking back to back for {share['window_s']:g} s at the same time, first "
                 f"{share['warmup_cycles']} invocations of each left out.")
    elif tls.get("cpu_share_unavailable"):
        head += f" CPU share not measured: {tls['cpu_share_unavailable']}."
    relay = tls.get("relay_cpu")
    if relay:
        head += (" Extension CPU per relayed SELECT 1 on an open session, back to back / after 30 ms idle: "
                 + "; ".join(f"{LABELS.get(p, p)} {r['back_to_back_us']:.0f} / {r['after_idle_us']:.0f} µs"
                             for p, r in relay.items()) + ".")
    rows = []
    ext_cpu = full.get("extension_cpu_us_per_connect_cycle_by_path", {})
    for path in ("direct_tlsreq_net", "dbk_tlsreq_net", "dbk_tlsreq_net_tlsargs"):
        x = full["paths"].get(path)
        if not x:
            continue
        w = x["wall_us"]
        row = [LABELS.get(path, path),
               f"{w['p50'] / 1000:.2f} ({w['p50_lo'] / 1000:.2f}–{w['p50_hi'] / 1000:.2f}) / {w['p90'] / 1000:.2f} / "
               f"{w['p99'] / 1000:.2f}",
               f"{x['connect_us']['p50'] / 1000:.2f}", f"{x['cpu_us']['p50'] / 1000:.2f}",
               f"{ext_cpu[path] / 1000:.2f}" if path in ext_cpu else "—",
               "yes" if x["tls_fraction"] > 0.5 else "no (local hop)"]
        y = share.get("paths", {}).get(path, {})
        if y.get("wall_us"):
            row += [f"{y['wall_us']['p50'] / 1000:.1f} / {y['wall_us']['p99'] / 1000:.1f}", f"{y['cycles_per_s']:.1f}",
                    f"{y['cpu_us_per_cycle'] / 1000:.2f}", f"{y['throttled_periods']} of {y['periods']}"]
        else:
            row += [y.get("error") or "—", "—", "—", "—"]
        rows.append(row)
    header = ["path", "full CPU: wall ms p50 (block range) / p90 / p99", "connect() alone ms p50", "client CPU ms p50",
              "extension CPU ms per cycle", "client TLS", f"{share.get('memory_mb', 128)} MB share: wall ms p50 / p99",
              "invocations/s",
              "CPU ms per invocation (the cgroup's processes)", "periods throttled"]
    return head + "\n\n" + _table(header, rows)


BASELINE_LIMIT = 1.05  # issue 9 (f): this build <= 1.05 x the baseline layer's


def baseline_rows(results: dict) -> list[dict]:
    """This build (dbk_*) / the --baseline-layer build (dbkb_*), measured in the same run, interleaved:
    one dict per comparison (what, this build, baseline, unit, ratio, lo, hi, limit, status); rows with
    limit None are context. Ratios > 1 mean this build is slower (or spends more CPU)."""
    rows = []

    def add(what, new, old, unit, scale=1.0, limit=BASELINE_LIMIT, digits=0):
        if not new or not old:
            return
        r = ratio(new, old)
        rows.append(dict(what=what, new=percentile(new, 50) * scale, baseline=percentile(old, 50) * scale,
                         unit=unit, digits=digits, ratio=r["ratio"], lo=r["lo"], hi=r["hi"], limit=limit,
                         status=verdict(r["ratio"], limit, False, r["lo"], r["hi"]) if limit else "context"))

    lat = results.get("latency")
    if lat:
        s = lat["samples_us"]
        for step, what, limit in (("select1_pymysql", "SELECT 1 p50, PyMySQL", BASELINE_LIMIT),
                                  ("select1_raw", "SELECT 1 p50, raw packets", BASELINE_LIMIT),
                                  ("select1_idle", "SELECT 1 p50 after 1 ms idle, raw", None)):
            for new, old, where in (("dbk_tcp", "dbkb_tcp", "TCP"), ("dbk_unix", "dbkb_unix", "Unix socket")):
                if step in s:
                    add(f"{what}, {where}", s[step].get(new), s[step].get(old), "µs", limit=limit)
    cpu = results.get("cpu")
    if cpu:
        c = cpu["samples"]
        for new, old, where in (("dbk_tcp", "dbkb_tcp", "TCP"), ("dbk_unix", "dbkb_unix", "Unix socket")):
            add(f"extension CPU per SELECT 1 (PyMySQL, {where}; per-round p50)", c["select1_us"].get(new),
                c["select1_us"].get(old), "µs", digits=1)
        for new, old, where in (("dbk_tcp", "dbkb_tcp", "TCP"), ("dbk_unix", "dbkb_unix", "Unix socket")):
            add(f"extension CPU per SELECT 1 after 1 ms idle (PyMySQL, {where}; per-round p50)",
                c.get("select1_idle_us", {}).get(new), c.get("select1_idle_us", {}).get(old), "µs", digits=1)
        add("extension CPU per 1 MB result (raw, TCP)", c["mb1_ms"].get("dbk_tcp"), c["mb1_ms"].get("dbkb_tcp"), "ms",
            limit=None, digits=2)
        t = cpu.get("transactions", {}).get("samples", {})
        add("extension CPU per global-connection invocation (PyMySQL autocommit off: ping, INSERT, SELECT, COMMIT; "
            "after 30 ms idle; TCP)", t.get("dbk_tcp"), t.get("dbkb_tcp"), "µs")
        add("the same, this build with DBKEEPER_SESSION_MOVES=false (--variant-env)", t.get("dbkv_tcp"),
            t.get("dbkb_tcp"), "µs", limit=None)
    con = results.get("connect")
    if con:
        v = con["variants"]
        for mode in ("defaults", "ssl_disabled"):
            for new, old, where in (("dbk_tcp", "dbkb_tcp", "TCP"),
                                    ("dbk_tcp_tlsdb_net", "dbkb_tcp_tlsdb_net",
                                     f"TLS upstream across {con.get('net_rtt_ms', 0):g} ms RTT")):
                a, b = v.get(f"1.1.1/{mode}/{new}"), v.get(f"1.1.1/{mode}/{old}")
                if a and b:
                    add(f"connect+SELECT 1+close per invocation, PyMySQL 1.1.1 {mode}, {where}", a["samples_wall_us"],
                        b["samples_wall_us"], "ms", scale=1e-3, digits=2)
        new = con.get("extension_cpu_us_per_connect_cycle")
        old = con.get("baseline_extension_cpu_us_per_connect_cycle")
        if new and old:
            rows.append(dict(what="extension CPU per connect cycle (whole phase / cycles; one figure, no blocks)",
                             new=new, baseline=old, unit="µs", digits=0, ratio=new / old, lo=math.nan, hi=math.nan,
                             limit=None, status="context"))
    return rows


def baseline_table(results: dict) -> str:
    base = results.get("baseline_layer", {})
    head = (f"This build (layer {results.get('layer_fingerprint', '?')}) / the baseline layer "
            f"{base.get('path', '?')} ({base.get('fingerprint', '?')}), both snapshotted, same settings, interleaved "
            f"in this run. Ratio = p50 / p50 (block range = per-block ratios); > 1 = this build slower. Target: "
            f"<= {BASELINE_LIMIT:g} x.")
    out = []
    for r in baseline_rows(results):
        spread = "—" if math.isnan(r["lo"]) else f"{r['lo']:.2f}–{r['hi']:.2f}"
        digits, unit = r["digits"], r["unit"]
        out.append([r["what"], f"{r['new']:.{digits}f} {unit}", f"{r['baseline']:.{digits}f} {unit}",
                    f"{r['ratio']:.3f}", spread, f"<= {r['limit']:g}" if r["limit"] else "—", r["status"]])
    return head + "\n\n" + _table(["comparison", "this build p50", "baseline p50", "ratio", "block range", "target",
                                    "status"], out)


def coldstart_table(results: dict) -> str:
    cold = results["coldstart"]["summary"]
    names = [("spawn_to_registered_ms", "spawn -> registered (wall ms)"),
             ("pre_main_ms", "  of which interpreter + imports before main()"),
             ("main_to_registered_ms", "  of which main() -> registered"),
             ("spawn_to_serving_ms", "spawn -> serving"),
             ("spawn_to_upstream_ready_ms", "spawn -> upstream ready"),
             ("upstream_connect_ms", "  upstream connect + handshake"),
             ("init_wall_ms", "Sandbox INIT (extension + awslambdaric runtime ready)"),
             ("cpu_at_ready_ms", "CPU ms at upstream ready (schedstat)"),
             ("cpu_ticks_at_ready_ms", "CPU ms at upstream ready (utime+stime ticks)"),
             ("vm_hwm_kb", "VmHWM at ready (kB)"), ("vm_rss_kb", "VmRSS at ready (kB)"),
             ("shutdown_to_server_closed_ms", "SHUTDOWN delivered -> upstream gone in PROCESSLIST (ms, upper bound)"),
             ("shutdown_to_threads_drop_ms", "SHUTDOWN -> server's connection count drops (ms)"),
             ("shutdown_delivery_to_extension_ms", "  of which emulator hop + EventPump thread -> loop (ms)"),
             ("shutdown_complete_ms_since_event", "extension's own shutdown_complete ms_since_event"),
             ("shutdown_exit_after_delivery_ms", "SHUTDOWN -> process exit (ms)")]
    alt = results["coldstart"].get("alternative", {})
    pyc = alt.get("summary", {})
    rows = []
    for key, label in names:
        s = cold.get(key)
        if not s or not s["n"]:
            continue
        digits = 0 if key.endswith("_kb") else 2
        vals = [r[key] for r in results["coldstart"]["runs"] if r.get(key) is not None]
        rows.append([label, _f(s["p50"], digits), _f(min(vals), digits), _f(max(vals), digits),
                     _f(pyc[key]["p50"], digits) if pyc.get(key, {}).get("n") else "—"])
    return _table([f"cold start (n={len(results['coldstart']['runs'])} each, interleaved)",
                   "as shipped p50", "min", "max", f"{alt.get('label', 'alternative').replace('_', ' ')} p50"], rows)


def imports_table(results: dict) -> str:
    imp = results["imports"]
    launcher = imp.get("launcher", {})
    alt = imp["alternative"]
    rows = [
        [f"launcher sh overhead ({launcher.get('sh', 'sh')}; launcher exec'ing /bin/true minus /bin/true)",
         _f(launcher.get("launcher_overhead_ms"), 1), "—"],
        ["`python -I -S -c pass` (wall, incl. fork/exec)", _f(imp["python_pass_ms"], 1), "—"],
        ["`python -I -S -c 'import dbkeeper.main'` (wall)", _f(imp["python_import_main_ms"], 1),
         _f(alt["python_import_main_ms"], 1)],
        ["import dbkeeper.main (before registering)", _f(imp["as_shipped"]["dbkeeper_main_ms"], 1),
         _f(alt["dbkeeper_main_ms"], 1)],
        ["import dbkeeper.event_pump, .lifecycle (after)", _f(imp["as_shipped"]["post_registration_ms"], 1),
         _f(alt["post_registration_ms"], 1)],
        ["import uvloop (after)", _f(imp["as_shipped"]["uvloop_ms"], 1), _f(alt["uvloop_ms"], 1)],
    ]
    def top(key):
        return ", ".join(f"{r['module'].strip()} {r['self_us'] / 1000:.1f}" for r in imp.get(key, [])[:8])
    return (_table(["import (best of N, ms)", f"as shipped ({imp['shipped_pyc_files']} .pyc files)",
                    alt["label"].replace("_", " ")], rows)
            + "\n\nLargest self import times before registering, as shipped (-X importtime, best of 3, ms): "
            + top("importtime_top_pre_registration")
            + "\n\nLargest self import times, whole chain, as shipped (best of 3, ms): "
            + top("importtime_top_as_shipped"))


def targets_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        spread = f"{r['spread'][0]:.2f}–{r['spread'][1]:.2f}" if r.get("spread") else "—"
        out.append([r["target"], r["value"], f"{_f(r['ratio'], 2)} (limit {r['limit']:g})", spread, r["status"],
                    r.get("note", "")])
    return _table(["target", "measured", "ratio", "range (blocks / runs)", "status", "context"], out)


def render(results: dict) -> str:
    parts = []
    if results.get("latency"):
        parts += ["### Per-query latency (interleaved; µs)", latency_table(results)]
    if results.get("connect"):
        parts += ["### Connect per invocation: connect() + SELECT 1 + close()", connect_table(results)]
    if results.get("tlsreq"):
        parts += ["### Connect per invocation against a database that requires TLS, at full CPU and at a 128 MB "
                  "CPU share", tlsreq_table(results)]
    if results.get("coldstart"):
        parts += ["### Cold start and shutdown", coldstart_table(results)]
    if results.get("imports"):
        parts += ["### Import time of the launcher's chain", imports_table(results)]
    if results.get("targets"):
        parts += ["### Targets", targets_table(results["targets"])]
    if results.get("baseline_layer"):
        parts += ["### Baseline layer comparison", baseline_table(results)]
    return "\n\n".join(parts)


def machine_text(results: dict) -> str:
    m = results["machine"]
    v = results.get("versions", {})
    return (f"{m['nproc']} vCPU {m['cpu_model']}, kernel {m['kernel']}, Python {m['python']}, "
            f"MariaDB {v.get('mariadb', '?')}, {m.get('socat') or 'socat ?'}, "
            f"PyMySQL {', '.join(results.get('connect', {}).get('clients', {}).values()) or '1.1.1'}; "
            f"load average before {m['loadavg'][0]:.2f}, after {results.get('loadavg_after', [math.nan])[0]:.2f}; "
            f"mode {results['mode']}, {results['started']}, {results['duration_s']:.0f} s")


# --------------------------------------------------------------------------- files

def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 3)
    if isinstance(obj, dict):
        return {str(k): _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def write_json(results: dict, stamp: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"results-{stamp}.json"
    text = json.dumps(_rounded(results), indent=1, default=str)
    path.write_text(text)
    (OUT / "latest.json").write_text(text)
    return path


def update_results_md(results: dict, json_path: Path) -> None:
    generated = "\n\n".join([
        BEGIN,
        f"Latest run: {machine_text(results)}. JSON: `bench/out/{json_path.name}` (not committed).",
        render(results),
        END,
    ])
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else f"# dbkeeper benchmark results\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: generated, text, flags=re.S)
    else:
        text += "\n" + generated + "\n"
    RESULTS_MD.write_text(text)
