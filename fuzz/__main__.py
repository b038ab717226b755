"""`./.venv/bin/python -m fuzz --mode inprocess|live [--minutes M | --seconds S | --runs N] [--seed S]`
`./.venv/bin/python -m fuzz --mode inprocess|live --replay FILE_OR_DIR...`

in-process: atheris over protocol/ and the relay (fuzz/targets.py); prints inputs tried, exec/s,
  coverage of protocol/ and relay.py, the worker's RSS/fds, and keeps findings in
  fuzz/corpus/inprocess/crash-<sha1>.
live: mutated sessions against the built extension (./build.sh first) with a throwaway MariaDB;
  prints inputs tried, inputs/s, the extension's RSS/fds before and after, and keeps findings in
  fuzz/corpus/live/crash-<sha1>.json.
Exit status 1 when anything was found. See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import fuzz  # noqa: F401  (sys.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("inprocess", "live"), required=True)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float)
    length.add_argument("--runs", type=int, help="number of inputs (deterministic with --seed)")
    parser.add_argument("--seed", type=int, help="default: random (printed)")
    parser.add_argument("--work", type=Path, help="in-process: directory of the corpus the run grows "
                        "(default .cache/fuzz/inprocess: kept between runs)")
    parser.add_argument("--target", help="in-process: fuzz only this target (packets, handshake, auth, messages, "
                        "scanner, responses, session_setup, relay)")
    parser.add_argument("--findings", type=Path, help="in-process: where inputs that fail an oracle are kept "
                        "(default fuzz/corpus/inprocess-findings)")
    parser.add_argument("--no-coverage", action="store_true", help="in-process: skip the coverage measurement")
    parser.add_argument("--stop-at-first", action="store_true", help="stop at the first finding")
    parser.add_argument("--layer", type=Path, help="live: the unpacked layer to run (default dist/layer-x86_64)")
    parser.add_argument("--replay", nargs="+", metavar="PATH", help="replay kept inputs instead of fuzzing")
    parser.add_argument("--repeat", type=int, default=1, help="live replay: run each kept input this many times")
    args = parser.parse_args(argv)

    if args.replay:
        if args.mode == "inprocess":
            from fuzz import replay

            return replay.main(args.replay)
        from fuzz import live

        files = [p for name in args.replay for p in
                 (sorted(Path(name).glob("*.json")) if Path(name).is_dir() else [Path(name)])]
        findings = live.replay(files, repeat=args.repeat, layer=args.layer or live.LAYER)
        for path, message in findings:
            print(f"FINDING {path}: {message}")
        print(f"replayed {len(files)} live input file(s): {len(findings)} finding(s)")
        return 1 if findings else 0

    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    if seconds is None and args.runs is None:
        seconds = 60.0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    print(f"fuzz: mode {args.mode}, seed {seed} (reproduce with --seed {seed}"
          f"{f' --runs {args.runs}' if args.runs else ''})", flush=True)
    if args.mode == "inprocess":
        import os

        from fuzz import inprocess

        if args.target:
            os.environ["DBKEEPER_FUZZ_TARGET"] = args.target

        work = args.work or fuzz.REPO / ".cache" / "fuzz" / "inprocess"
        outcome = inprocess.run(seconds, args.runs, seed, work, crash_dir=args.findings or inprocess.FINDINGS,
                                restart=not args.stop_at_first,
                                measure_coverage=not args.no_coverage, log=lambda m: print(m, flush=True))
        inprocess.report(outcome)
        return 1 if outcome.findings else 0
    from fuzz import live

    result = live.campaign(seconds, args.runs, seed, log=lambda m: print(m, flush=True),
                           stop_at_first=args.stop_at_first, layer=args.layer or live.LAYER)
    live.report(result)
    return 1 if result.findings else 0


if __name__ == "__main__":
    sys.exit(main())
