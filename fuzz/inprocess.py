"""The in-process campaign: atheris (libFuzzer) over fuzz/targets.py, then the grown corpus
replayed under coverage.py for the coverage of protocol/ and relay.py.

libFuzzer ends its process at the first finding; for a timed run the worker is started again
(with the next seed) until the time is up, so one defect does not end a long campaign. Findings
are written to the corpus directory as crash-<sha1> (libFuzzer's name) and replayed by the tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import fuzz
from fuzz import procstat

CORPUS = fuzz.REPO / "fuzz" / "corpus" / "inprocess"            # seeds: the worker starts from them
FINDINGS = fuzz.REPO / "fuzz" / "corpus" / "inprocess-findings"  # inputs that failed an oracle once
DICTIONARY = fuzz.REPO / "fuzz" / "inprocess.dict"
MAX_LEN = 4096


@dataclass
class Outcome:
    seed: int
    inputs: int = 0
    seconds: float = 0.0
    restarts: int = 0
    findings: list[tuple[str, str]] = field(default_factory=list)  # (file, first line of the message)
    first_finding_after: int | None = None  # inputs tried before the first finding
    first_by_kind: dict[str, int] = field(default_factory=dict)  # kind of finding -> inputs tried until it
    rss_kb: list[int] = field(default_factory=list)  # samples of the worker's RSS
    fds: list[int] = field(default_factory=list)
    coverage: dict | None = None


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run(seconds: float | None, runs: int | None, seed: int, work: Path, crash_dir: Path = FINDINGS,
        restart: bool = True, measure_coverage: bool = True, log=print) -> Outcome:
    if not _atheris_available():
        sys.exit("fuzz: atheris is not installed (requirements-dev.txt pins it; x86_64 Linux, CPython 3.11)")
    work.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(seed)
    known = {kind(message) for _, message in _replay_findings(crash_dir)}
    deadline = time.monotonic() + seconds if seconds is not None else None
    started = time.monotonic()
    while True:
        args = [sys.executable, "-m", "fuzz.worker", str(work), str(CORPUS),
                f"-seed={seed + outcome.restarts}", f"-max_len={MAX_LEN}", "-timeout=30", "-rss_limit_mb=2048",
                f"-artifact_prefix={crash_dir}/", "-print_final_stats=1", f"-dict={DICTIONARY}",
                "-reload=0", "-print_pcs=0"]
        if deadline is not None:
            args.append(f"-max_total_time={max(1, int(deadline - time.monotonic()))}")
        if runs is not None:
            args.append(f"-runs={runs - outcome.inputs}")
        log(f"fuzz: {' '.join(args[1:4])} {' '.join(args[5:])}")
        code, stats, finding = _run_worker(args, outcome)
        outcome.inputs += stats.get("number_of_executed_units", 0)
        if finding is not None:
            outcome.findings.append(finding)
            if outcome.first_finding_after is None:
                outcome.first_finding_after = outcome.inputs
            outcome.first_by_kind.setdefault(kind(finding[1]), outcome.inputs)
            log(f"fuzz: FINDING after {outcome.inputs} inputs: {finding[1]}")
            if kind(finding[1]) in known:  # one kept input per kind of finding is enough
                os.unlink(fuzz.REPO / finding[0])
                log("fuzz:   (an input showing this kind of finding is kept already)")
            else:
                known.add(kind(finding[1]))
                log(f"fuzz:   input kept as {finding[0]}")
                log(f"fuzz:   replay: ./.venv/bin/python -m fuzz --mode inprocess --replay {finding[0]}")
        elif code != 0:
            sys.exit(f"fuzz: the atheris worker failed with exit status {code}")
        outcome.restarts += 1
        if finding is None or not restart or (deadline is not None and time.monotonic() >= deadline - 1) \
                or (runs is not None and outcome.inputs >= runs):
            break
    outcome.seconds = time.monotonic() - started
    if measure_coverage:
        outcome.coverage = measure(work)
    return outcome


def kind(message: str) -> str:
    """A finding's message without its numbers: the same defect found twice has one kind."""
    return re.sub(r"\[[^\]]*\]|[\d.]+", "N", message)


def _replay_findings(directory: Path) -> list[tuple[Path, str]]:
    from fuzz import replay

    return replay.replay(replay.input_files([str(directory)])) if directory.is_dir() else []


def _run_worker(args: list[str], outcome: Outcome) -> tuple[int, dict, tuple[str, str] | None]:
    env = {**os.environ, "PYTHONPATH": str(fuzz.REPO)}
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(args, cwd=fuzz.REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        sampler = threading.Thread(target=_sample, args=(process, outcome), daemon=True)
        sampler.start()
        code = process.wait()
        sampler.join()
        output.seek(0)
        text = output.read()
    stats = {m.group(1): float(m.group(2)) if "." in m.group(2) else int(m.group(2))
             for m in re.finditer(r"stat::(\w+):\s+([\d.]+)", text)}
    finding = None
    written = re.search(r"Test unit written to (\S+)", text)
    if written:
        message = (re.search(r"^(?:fuzz\.targets\.)?Finding: (.*)$", text, re.M)
                   or re.search(r"^(\w+Error.*)$", text, re.M))
        finding = (os.path.relpath(written.group(1), fuzz.REPO), message.group(1) if message else text[-2000:])
    return code, stats, finding


def _sample(process: subprocess.Popen, outcome: Outcome) -> None:
    time.sleep(1.0)  # past the imports and instrumentation
    while process.poll() is None:
        rss, fds = procstat.rss_kb(process.pid), procstat.open_fds(process.pid)
        if rss is not None and fds is not None:
            outcome.rss_kb.append(rss)
            outcome.fds.append(fds)
        time.sleep(2.0)


def measure(work: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.run([sys.executable, "-m", "fuzz.replay", "--coverage", report.name, str(work), str(CORPUS),
                        str(FINDINGS)],
                       cwd=fuzz.REPO, env={**os.environ, "PYTHONPATH": str(fuzz.REPO)}, stdout=subprocess.DEVNULL,
                       check=False)
        return json.loads(Path(report.name).read_text() or "{}")


def report(outcome: Outcome, log=print) -> None:
    rate = outcome.inputs / outcome.seconds if outcome.seconds else 0
    log(f"in-process: seed {outcome.seed}, {outcome.inputs} inputs in {outcome.seconds:.0f} s "
        f"({rate:.0f} exec/s), {outcome.restarts} worker run(s), {len(outcome.findings)} finding(s)")
    if outcome.rss_kb:
        log(f"in-process: worker RSS {outcome.rss_kb[0] / 1024:.1f} MB -> {outcome.rss_kb[-1] / 1024:.1f} MB, "
            f"open fds {outcome.fds[0]} -> {outcome.fds[-1]}")
    if outcome.coverage and outcome.coverage.get("totals"):
        totals = outcome.coverage["totals"]
        log(f"coverage (corpus of {outcome.coverage['inputs']} inputs): protocol/ + relay.py "
            f"lines {totals['covered_lines']}/{totals['num_statements']} "
            f"({100 * totals['covered_lines'] / totals['num_statements']:.1f}%), "
            f"branches {totals['covered_branches']}/{totals['num_branches']} "
            f"({100 * totals['covered_branches'] / max(1, totals['num_branches']):.1f}%)")
        for name, summary in sorted(outcome.coverage["files"].items()):
            if summary["num_statements"]:
                log(f"  {name:28} lines {summary['covered_lines']:4}/{summary['num_statements']:<4} "
                    f"branches {summary['covered_branches']:3}/{summary['num_branches']:<3}")
    by_message: dict[str, list[str]] = {}
    for path, message in outcome.findings:
        by_message.setdefault(kind(message), []).append(path)
    for message, paths in by_message.items():
        log(f"FINDING ({len(paths)}x): {message}")
    for name, count in outcome.first_by_kind.items():
        log(f"first found after {count} inputs: {name}")
