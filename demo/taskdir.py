"""Build a Lambda task directory (/var/task) for sample_function/: its code plus its dependencies.

Lambda runs a .zip function from a directory holding the handler module and its vendored packages
(`pip install -r requirements.txt --target <dir>`). This does the same for the local sandbox, without
network access when possible, in this order:

1. `pip install --no-index --find-links <wheelhouse> --target <dir> -r requirements.txt` from a local
   wheel cache: $DBKEEPER_WHEELHOUSE, else build.sh's .cache/wheels/<machine>-cp<XY>/ directories
   (they hold the same pinned PyMySQL wheel the layer vendors);
2. copy the package installed in this interpreter (the dev venv's PyMySQL), if its version is the
   one pinned in requirements.txt;
3. otherwise fail, saying how to get the wheel (`pip download -d <dir> -r requirements.txt`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_function"


class TaskDirError(RuntimeError):
    pass


def pinned_requirements(req_file: Path) -> dict[str, str]:
    """{distribution name (lower case): version} of `name==version` lines."""
    pins = {}
    for line in req_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.\-+!]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
        elif line:
            raise TaskDirError(f"{req_file}: only pinned `name==version` lines are supported here: {line!r}")
    return pins


def wheelhouses() -> list[Path]:
    env = os.environ.get("DBKEEPER_WHEELHOUSE")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    machine = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    cache = REPO / ".cache" / "wheels"
    preferred = cache / f"{machine}-{tag}"
    others = sorted(p for p in cache.glob("*") if p.is_dir() and p != preferred) if cache.is_dir() else []
    return [p for p in [preferred, *others] if p.is_dir()]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _has_wheels(house: Path, pins: dict[str, str]) -> bool:
    """Every pinned distribution has a wheel of that version in house."""
    have = set()
    for whl in house.glob("*.whl"):
        parts = whl.name.split("-")
        if len(parts) >= 5:
            have.add((_normalize(parts[0]), parts[1]))
    return all((_normalize(dist), version) in have for dist, version in pins.items())


def _pip_from_wheelhouse(house: Path, req: Path, dest: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--no-compile", "--find-links", str(house), "--target", str(dest), "-r", str(req)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise TaskDirError(f"pip install from {house} failed:\n{proc.stdout}{proc.stderr}")


def _copy_installed(pins: dict[str, str], dest: Path) -> None:
    for dist_name, version in pins.items():
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise TaskDirError(f"{dist_name} is not installed in {sys.executable}") from None
        if dist.version != version:
            raise TaskDirError(f"{dist_name} {dist.version} is installed, requirements.txt pins {version}")
        for f in dist.files or []:
            src = Path(dist.locate_file(f))
            rel = Path(f)
            if rel.parts[0] == ".." or rel.is_absolute() or "__pycache__" in rel.parts or rel.suffix == ".pyc":
                continue  # scripts outside site-packages, bytecode
            if not src.is_file():
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def build_task_dir(dest: str | os.PathLike | None = None, source: Path = SAMPLE) -> tuple[Path, str]:
    """Create (or fill) a task directory with source's *.py files and its pinned requirements.
    Returns (directory, how the dependencies were installed)."""
    dest = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="dbkeeper-task-"))
    dest.mkdir(parents=True, exist_ok=True)
    for f in source.glob("*.py"):
        shutil.copy2(f, dest / f.name)
    req = source / "requirements.txt"
    pins = pinned_requirements(req)
    if not pins:
        return dest, "no requirements"
    problems = []
    for house in wheelhouses():
        if _has_wheels(house, pins):
            try:
                _pip_from_wheelhouse(house, req, dest)
                return dest, f"pip install --no-index --find-links {house}"
            except TaskDirError as exc:
                problems.append(str(exc))
    try:
        _copy_installed(pins, dest)
        return dest, f"copied from {sys.executable}'s site-packages"
    except TaskDirError as exc:
        problems.append(str(exc))
    raise TaskDirError(
        "cannot install sample_function's requirements without network access:\n  "
        + "\n  ".join(problems)
        + f"\nGet the wheels once with: {sys.executable} -m pip download -d .cache/wheels/local -r {req}"
        + " and set DBKEEPER_WHEELHOUSE=.cache/wheels/local"
    )
