"""The repository passes ruff with the configuration in pyproject.toml (part of the test command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _ruff() -> list[str]:
    # The ruff installed next to this interpreter (requirements-dev.txt pins it), never another one on PATH.
    return [str(Path(sys.executable).with_name("ruff"))]


def test_ruff_finds_nothing():
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ruff found problems (`ruff check --fix` fixes some):\n{proc.stdout}{proc.stderr}"


def test_ruff_reports_a_finding(tmp_path):
    # given a file with an unused import under the repository's configuration, ruff fails on it
    # (so the test above fails when the code has findings, rather than passing for lack of a linter)
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "F401" in proc.stdout, proc.stdout + proc.stderr
