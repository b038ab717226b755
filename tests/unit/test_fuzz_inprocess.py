"""Spec: the in-process fuzz targets (fuzz/targets.py) hold on every input kept in the corpus, a
short coverage-guided run from a fixed seed finds nothing, and the oracles are not vacuous: with
a known defect put back, the input kept for it fails again."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fuzz import replay, targets  # noqa: E402

KEPT = replay.input_files([str(REPO / "fuzz" / "corpus" / "inprocess"),
                           str(REPO / "fuzz" / "corpus" / "inprocess-findings")])


def test_the_corpus_has_seeds_for_every_target():
    covered = {targets.TARGETS[path.read_bytes()[0] % len(targets.TARGETS)][0] for path in KEPT if path.stat().st_size}
    assert covered == {name for name, _ in targets.TARGETS}


@pytest.mark.parametrize("path", KEPT, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_kept_input_passes_every_oracle(path):
    targets.run_one(path.read_bytes())


def test_a_short_coverage_guided_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris")
    run = subprocess.run([sys.executable, "-m", "fuzz", "--mode", "inprocess", "--runs", "12000", "--seed", "20261201",
                          "--work", str(tmp_path / "work"), "--findings", str(tmp_path / "findings"),
                          "--no-coverage", "--stop-at-first"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "12000 inputs" in run.stdout and "0 finding(s)" in run.stdout


def first_finding(target_index, most=20000):
    """Random inputs (fixed seed) for one target until an oracle fails: the finding, or None."""
    rng = random.Random(20261201)
    for _ in range(most):
        data = bytes((target_index,)) + rng.randbytes(rng.randint(1, 400))
        try:
            targets.run_one(data)
        except targets.Finding as exc:
            return exc
    return None


def index_of(name):
    return [n for n, _ in targets.TARGETS].index(name)


def test_the_relay_oracle_fails_when_an_empty_packet_is_taken_for_no_command(monkeypatch):
    """Issue 13's first defect put back: the relay expects no reply for an empty packet."""
    from dbkeeper.protocol import commands
    from dbkeeper.relay import Relay

    original = Relay._on_commands
    monkeypatch.setattr(Relay, "_on_commands",
                        lambda self, codes: original(self, [c for c in codes if c != commands.EMPTY_PACKET]))
    finding = first_finding(index_of("relay"))
    assert finding is not None and "still owes" in str(finding)


def test_the_setup_oracle_fails_when_classification_is_super_linear(monkeypatch):
    """Issue 13's third defect put back: a pattern ending in `\\s*;?\\s*\\Z` backtracks quadratically."""
    import re

    from dbkeeper.protocol import session_setup

    quadratic = re.compile(rb"\s*SET\s+NAMES\s+\w+\s*;?\s*\Z", re.I)
    monkeypatch.setattr(session_setup, "classify",
                        lambda command: session_setup.Effect(None) if quadratic.match(command[1:]) else None)
    finding = first_finding(index_of("session_setup"))
    assert finding is not None and "super-linear" in str(finding)


def test_a_reset_sent_before_the_rows_leaves_the_upstream_owing_replies():
    """The 30-minute in-process run's finding, as the relay sees it: a result's column count,
    definition and the EOF ending the definitions are relayed, then the client sends
    COM_RESET_CONNECTION; the rows and the final EOF are still owed, so the upstream is not
    between replies."""
    from relay_doubles import Side

    from dbkeeper.protocol.packets import frame, lenenc_int
    from dbkeeper.relay import Relay
    from fuzz.server_model import column, eof

    relay = Relay(Side(), Side())
    assert relay.client_data(frame(b"\x03SELECT 'secret'", 0)) is None
    relay.upstream_data(frame(lenenc_int(1), 1) + frame(column(), 2) + frame(eof(), 3))
    rest = relay.client_data(frame(b"\x1f", 0))
    assert rest is not None and rest[4] == 0x1F
    assert not relay.settle()
