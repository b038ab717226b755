"""Spec: the live fuzzer (fuzz/live.py) against the built extension and a real MariaDB: every kept
input (seeds and past findings) passes every check, and a short run from a fixed seed finds
nothing. The checks: well-behaved clients up to the pool size are all served, each gets exactly
its own answer and sees no state of any earlier session; PyMySQL's SELECT 1 works; the server
shows exactly the pool's sessions; RSS and descriptors stay flat; no input costs seconds of CPU."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fuzz import live  # noqa: E402


def test_every_kept_live_input_passes_every_check(built_layer, fresh_mariadb):
    files = sorted(live.CORPUS.glob("*.json"))
    assert any(p.name.startswith("seed-") for p in files)
    # a kept race (a client gone while its connection is opened) needs several runs to show again
    findings = live.replay(files, log=lambda m: None, repeat=8, layer=built_layer.tree_x86_64, db=fresh_mariadb)
    assert findings == []


def test_a_short_live_run_finds_nothing(built_layer, fresh_mariadb):
    lines = []
    result = live.campaign(None, 120, seed=20261201, log=lines.append, layer=built_layer.tree_x86_64,
                           db=fresh_mariadb, check_every=60)
    assert result.findings == [], "\n".join(lines)
    assert result.inputs == 120 and result.checks >= 3
    assert result.fds[-1] <= result.fds[0] + live.FD_SLACK
