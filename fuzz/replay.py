"""Replays in-process inputs (corpus files) through the targets, optionally under coverage.py.

    python -m fuzz.replay [--coverage JSON_OUT] FILE_OR_DIR...

Exit status 1 if any input fails an oracle (each failure is printed with its file). Coverage is
measured in this process, started before dbkeeper is imported, over protocol/ and relay.py: the
coverage a fuzzing run reached is the coverage of the corpus it grew.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import fuzz

PACKAGE = fuzz.REPO / "extension" / "dbkeeper"
MEASURED = [str(PACKAGE / "protocol" / "*.py"), str(PACKAGE / "relay.py")]


def input_files(paths: list[str]) -> list[Path]:
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "README")))
        elif path.is_file():
            files.append(path)
    return files


def replay(files: list[Path]) -> list[tuple[Path, str]]:
    from fuzz import targets

    failures = []
    for path in files:
        try:
            targets.run_one(path.read_bytes())
        except targets.Finding as exc:
            failures.append((path, str(exc)))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.replay")
    parser.add_argument("--coverage", metavar="JSON_OUT", help="measure line and branch coverage, write totals here")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    files = input_files(args.paths)
    cov = None
    if args.coverage:
        import coverage

        cov = coverage.Coverage(branch=True, include=MEASURED, data_file=None)
        cov.start()
    started = time.monotonic()
    failures = replay(files)
    elapsed = time.monotonic() - started
    if cov is not None:
        cov.stop()
        with tempfile.NamedTemporaryFile(suffix=".json") as report:
            cov.json_report(outfile=report.name, include=MEASURED)
            data = json.load(open(report.name))
        summary = {"inputs": len(files), "seconds": round(elapsed, 2), "totals": data["totals"],
                   "files": {Path(name).name if "protocol" not in name else "protocol/" + Path(name).name:
                             info["summary"] for name, info in data["files"].items()}}
        Path(args.coverage).write_text(json.dumps(summary, indent=1))
    for path, message in failures:
        print(f"FINDING {path}: {message}")
    print(f"replayed {len(files)} input(s) in {elapsed:.1f} s: {len(failures)} finding(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
