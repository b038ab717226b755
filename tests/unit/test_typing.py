"""The extension passes `mypy --strict` with the configuration in pyproject.toml (part of the test command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _mypy() -> list[str]:
    # The mypy installed next to this interpreter (requirements-dev.txt pins it), never another one on PATH;
    # no cache, so a stale one can neither hide a finding nor leave files in the repository.
    return [str(Path(sys.executable).with_name("mypy")), "--cache-dir", "/dev/null", "--no-color-output"]


def test_mypy_strict_finds_nothing_in_the_extension():
    proc = subprocess.run(_mypy(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mypy found problems:\n{proc.stdout}{proc.stderr}"
    # the configured files were checked (not an empty run): every module of the package
    modules = len(list((REPO / "extension" / "dbkeeper").rglob("*.py")))
    assert f"no issues found in {modules} source files" in proc.stdout, proc.stdout


def test_mypy_reports_a_finding(tmp_path):
    # given a function without annotations under the repository's configuration, strict mypy fails on
    # it (so the test above fails when the extension has findings, rather than passing for lack of a checker)
    bad = tmp_path / "bad.py"
    bad.write_text("def untyped(x):\n    return x\n")
    proc = subprocess.run([*_mypy(), "--config-file", str(REPO / "pyproject.toml"), str(bad)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "[no-untyped-def]" in proc.stdout, proc.stdout + proc.stderr
