"""./build.sh produces the layer zips described in docs/CONVENTIONS.md, and the launcher starts the
extension with an interpreter that sees only the layer's own files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, BuiltLayer

ARCHES = {"x86_64": ("x86_64", 62), "arm64": ("aarch64", 183)}  # layer arch: (gnu name, ELF e_machine)
PY_TAGS = ("311", "312", "313")
EXTENSION_SRC = REPO_ROOT / "extension" / "dbkeeper"
HAS_MAIN = (EXTENSION_SRC / "main.py").is_file()


def zip_of(layer: BuiltLayer, arch: str) -> Path:
    return layer.zip_x86_64 if arch == "x86_64" else layer.zip_arm64


def tree_of(layer: BuiltLayer, arch: str) -> Path:
    return layer.tree_x86_64 if arch == "x86_64" else layer.tree_arm64


def entries(path: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: i for i in zf.infolist()}


def mode(info: zipfile.ZipInfo) -> int:
    return info.external_attr >> 16


def elf_machine_and_sections(data: bytes) -> tuple[int, set[str]]:
    """e_machine and section names of a little-endian ELF64 file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LSB file"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    strtab_off = headers[e_shstrndx][4]
    names = set()
    for sh_name, *_ in headers:
        end = data.index(b"\0", strtab_off + sh_name)
        names.add(data[strtab_off + sh_name : end].decode())
    return e_machine, names


# ------------------------------------------------------------------------------ zip contents


@pytest.mark.parametrize("arch", ARCHES)
def test_zip_has_the_opt_layout_and_nothing_in_python(built_layer: BuiltLayer, arch: str) -> None:
    names = entries(zip_of(built_layer, arch))
    for required in (
        "extensions/dbkeeper",
        "dbkeeper/bootstrap.py",
        "dbkeeper/lib/dbkeeper/__init__.py",
        "dbkeeper/lib/pymysql/__init__.py",
        "dbkeeper/lib/PyMySQL-1.1.1.dist-info/METADATA",
        "dbkeeper/lib/uvloop/__init__.py",
        "dbkeeper/lib/uvloop-0.21.0.dist-info/METADATA",
    ):
        assert required in names, required
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"extensions", "dbkeeper", "dbkeeper-wrapper"}, tops
    assert not any(n == "python" or n.startswith("python/") for n in names)
    # Lambda starts every file directly in extensions/: only ours may be there
    assert [n for n in names if n.startswith("extensions/") and n != "extensions/"] == ["extensions/dbkeeper"]


@pytest.mark.parametrize("arch", ARCHES)
def test_zip_entries_are_deterministic_and_modes_are_unix(built_layer: BuiltLayer, arch: str) -> None:
    infos = list(entries(zip_of(built_layer, arch)).values())
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)} or "SOURCE_DATE_EPOCH" in os.environ
    executable = {"extensions/dbkeeper", "dbkeeper-wrapper"}
    for info in infos:
        m = mode(info)
        assert info.create_system == 3, info.filename
        if info.is_dir():
            assert m == stat.S_IFDIR | 0o755, info.filename
        elif info.filename in executable or info.filename.endswith(".so"):
            assert m == stat.S_IFREG | 0o755, (info.filename, oct(m))
        else:
            assert m == stat.S_IFREG | 0o644, (info.filename, oct(m))
    if (REPO_ROOT / "layer" / "dbkeeper-wrapper").exists():
        assert mode(entries(zip_of(built_layer, arch))["dbkeeper-wrapper"]) == stat.S_IFREG | 0o755


@pytest.mark.parametrize("arch", ARCHES)
def test_bytecode_for_each_python_and_no_tests_or_typing_sources(built_layer: BuiltLayer, arch: str) -> None:
    names = entries(zip_of(built_layer, arch))
    for name in names:
        parts = name.rstrip("/").split("/")
        assert "tests" not in parts, name
        assert not name.endswith((".pyo", ".pyi", ".pxd", ".pyx", ".pxi")), name
    # every module has bytecode for every supported Python (/opt is read-only: it could not be
    # written at run time), hash-based and unchecked so file timestamps never invalidate it
    with zipfile.ZipFile(zip_of(built_layer, arch)) as zf:
        for name in names:
            if not name.endswith(".py") or not name.startswith("dbkeeper/lib/"):
                continue
            directory, _, module = name.rpartition("/")
            for tag in PY_TAGS:
                if find_python(f"{tag[0]}.{tag[1:]}") is None:
                    continue  # build.sh warns: no interpreter here to compile for that version
                pyc = f"{directory}/__pycache__/{module[:-3]}.cpython-{tag}.pyc"
                assert pyc in names, pyc
                flags = int.from_bytes(zf.read(pyc)[4:8], "little")
                assert flags == 0b01, (pyc, flags)  # hash-based, not checked against the source


@pytest.mark.parametrize("arch", ARCHES)
def test_uvloop_extension_modules_for_each_python_and_the_right_cpu(built_layer: BuiltLayer, arch: str) -> None:
    gnu, e_machine = ARCHES[arch]
    with zipfile.ZipFile(zip_of(built_layer, arch)) as zf:
        so_names = sorted(n for n in zf.namelist() if n.endswith(".so"))
        expected = [f"dbkeeper/lib/uvloop/loop.cpython-{t}-{gnu}-linux-gnu.so" for t in PY_TAGS]
        assert so_names == expected
        for name in so_names:
            machine, sections = elf_machine_and_sections(zf.read(name))
            assert machine == e_machine, (name, machine)
            assert ".dynsym" in sections
            # build.sh strips debug info (uvloop ships ~13 MB of it per module)
            assert not any(s.startswith(".debug") for s in sections), (name, sorted(sections))


@pytest.mark.parametrize("arch", ARCHES)
def test_extension_package_is_the_source_tree(built_layer: BuiltLayer, arch: str) -> None:
    names = entries(zip_of(built_layer, arch))
    in_zip = {n[len("dbkeeper/lib/dbkeeper/"):] for n in names
              if n.startswith("dbkeeper/lib/dbkeeper/") and not n.endswith("/") and "/__pycache__/" not in n}
    in_src = {
        p.relative_to(EXTENSION_SRC).as_posix()
        for p in EXTENSION_SRC.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }
    assert in_src and in_zip == in_src


@pytest.mark.parametrize("arch", ARCHES)
def test_unpacked_tree_matches_the_zip(built_layer: BuiltLayer, arch: str) -> None:
    tree = tree_of(built_layer, arch)
    files = {
        p.relative_to(tree).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in tree.rglob("*")
        if p.is_file()
    }
    with zipfile.ZipFile(zip_of(built_layer, arch)) as zf:
        zipped = {i.filename: stat.S_IMODE(mode(i)) for i in zf.infolist() if not i.is_dir()}
        assert files == zipped
        for name in ("extensions/dbkeeper", "dbkeeper/bootstrap.py"):
            assert zf.read(name) == (tree / name).read_bytes()
    assert os.access(tree / "extensions" / "dbkeeper", os.X_OK)


def test_build_reports_sizes_and_uses_cached_wheels(built_layer: BuiltLayer) -> None:
    for arch in ARCHES:
        assert f"dist/dbkeeper-layer-{arch}.zip" in built_layer.output
        assert zip_of(built_layer, arch).stat().st_size < 10 * 1024 * 1024
    for gnu, _ in ARCHES.values():
        for tag in PY_TAGS:
            wheels = list((REPO_ROOT / ".cache" / "wheels" / f"{gnu}-cp{tag}").glob("*.whl"))
            assert any(w.name.startswith("uvloop-0.21.0-") for w in wheels)


# ------------------------------------------------------------------------------ launcher + bootstrap

PROBE_MAIN = '''
import json, os, sys
def main(argv):
    try:
        import pytest  # only in the dev venv's site-packages
        leaked = pytest.__file__
    except ImportError:
        leaked = None
    import pymysql, uvloop
    print(json.dumps({
        "argv": argv, "path": sys.path, "executable": sys.executable,
        "isolated": sys.flags.isolated, "no_site": sys.flags.no_site,
        "ignore_environment": sys.flags.ignore_environment,
        "dont_write_bytecode": sys.dont_write_bytecode,
        "site_loaded": "site" in sys.modules, "leaked": leaked,
        "pymysql": pymysql.__file__, "uvloop": uvloop.__file__, "cwd": os.getcwd(),
    }))
    return 3
'''


@pytest.fixture
def probe_opt(built_layer: BuiltLayer, tmp_path: Path) -> Path:
    """A copy of the unpacked x86_64 layer whose dbkeeper.main is a probe that reports its world."""
    opt = tmp_path / "opt"
    shutil.copytree(built_layer.tree_x86_64, opt, symlinks=True)
    package = opt / "dbkeeper" / "lib" / "dbkeeper"
    (package / "main.py").write_text(PROBE_MAIN)
    for stale in (package / "__pycache__").glob("main.*.pyc"):
        stale.unlink()  # unchecked-hash bytecode would otherwise win over the probe's source
    return opt


def bytecode_files(tree: Path) -> set[Path]:
    return set(tree.rglob("*.pyc"))


def run_launcher(path: Path | str, env_extra: dict[str, str] | None = None, *,
                 cwd: Path | str = "/") -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DBKEEPER_PYTHON": sys.executable}
    env.update(env_extra or {})
    return subprocess.run([str(path)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_launcher_runs_bootstrap_isolated_from_site_packages_and_python_env(probe_opt: Path) -> None:
    # given PYTHON* variables that would normally put the venv's packages on sys.path
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    launcher = probe_opt / "extensions" / "dbkeeper"
    proc = run_launcher(launcher, {"PYTHONPATH": site_packages, "PYTHONSTARTUP": "/nonexistent", "PYTHONINSPECT": "1"})
    # then main(argv) ran, its return value is the exit code, and it saw only the layer
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    lib = str(probe_opt.resolve() / "dbkeeper" / "lib")
    assert report["argv"] == [str(launcher)]  # argv[0] is the launcher: it registers under its name
    assert report["path"][0] == lib
    assert not any("site-packages" in p for p in report["path"]), report["path"]
    assert report["leaked"] is None
    assert (report["isolated"], report["no_site"], report["ignore_environment"]) == (1, 1, 1)
    assert report["site_loaded"] is False
    assert report["dont_write_bytecode"] is True
    assert report["pymysql"].startswith(lib + "/") and report["uvloop"].startswith(lib + "/")
    pycache = probe_opt / "dbkeeper" / "lib" / "dbkeeper" / "__pycache__"
    assert not any(p.name.startswith("main.") for p in pycache.glob("*.pyc"))  # nothing written


def test_launcher_found_through_a_symlink_uses_its_real_directory(probe_opt: Path, tmp_path: Path) -> None:
    # given /somewhere/extensions/dbkeeper -> the real launcher, and an /opt that is itself a link
    link_dir = tmp_path / "elsewhere" / "extensions"
    link_dir.mkdir(parents=True)
    (link_dir / "dbkeeper").symlink_to(probe_opt / "extensions" / "dbkeeper")
    (tmp_path / "opt-link").symlink_to(probe_opt, target_is_directory=True)
    lib = str(probe_opt.resolve() / "dbkeeper" / "lib")
    for path in (link_dir / "dbkeeper", tmp_path / "opt-link" / "extensions" / "dbkeeper"):
        proc = run_launcher(path, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        report = json.loads(proc.stdout)
        assert report["path"][0] == lib
        assert report["argv"] == [str(path)]  # the name Lambda started it under is kept


def test_launcher_passes_extra_arguments_after_its_path(probe_opt: Path) -> None:
    launcher = probe_opt / "extensions" / "dbkeeper"
    proc = subprocess.run(
        [str(launcher), "--help-settings"], env={"PATH": os.environ["PATH"], "DBKEEPER_PYTHON": sys.executable},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3 and json.loads(proc.stdout)["argv"] == [str(launcher), "--help-settings"]


def test_launcher_without_a_python_logs_json_and_exits_1(probe_opt: Path) -> None:
    launcher = probe_opt / "extensions" / "dbkeeper"
    # DBKEEPER_PYTHON pointing nowhere
    proc = run_launcher(launcher, {"DBKEEPER_PYTHON": "/nonexistent/python3"})
    assert proc.returncode == 1
    line = json.loads(proc.stdout.strip())
    assert line["level"] == "error" and line["event"] == "python_not_found"
    # no DBKEEPER_PYTHON, no Lambda runtime, no python3 on PATH
    if os.path.exists("/var/lang/bin/python3"):
        pytest.skip("this machine has a Lambda runtime python at /var/lang/bin/python3")
    env = {"PATH": "/nonexistent"}
    proc = subprocess.run([str(launcher)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert json.loads(proc.stdout.strip())["event"] == "python_not_found"


@pytest.mark.xfail(not HAS_MAIN, reason="extension/dbkeeper/main.py not written yet", strict=True)
def test_real_extension_imports_with_only_the_layer_on_sys_path(built_layer: BuiltLayer) -> None:
    # The extension's whole import graph must resolve from dbkeeper/lib alone (-I -S, as launched).
    lib = built_layer.tree_x86_64 / "dbkeeper" / "lib"
    probe = (
        "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, sys.argv[1]); "
        "import dbkeeper.main, pymysql, uvloop; "
        "assert callable(dbkeeper.main.main); "
        "bad = [m.__file__ for m in list(sys.modules.values()) "
        "if 'site-packages' in (getattr(m, '__file__', '') or '')]; "
        "assert not bad, bad; print(dbkeeper.main.__file__)"
    )
    assert run_in_layer_python(probe, lib) == str(lib / "dbkeeper" / "main.py")


def test_the_extension_process_loads_pymysqls_constants_but_never_its_client(built_layer: BuiltLayer) -> None:
    # given the layer's lib as the bootstrap arranges it, when every module of dbkeeper is imported
    lib = built_layer.tree_x86_64 / "dbkeeper" / "lib"
    probe = (
        "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, sys.argv[1])\n"
        "from dbkeeper.cold_start import register_pymysql_without_its_client\n"
        "assert register_pymysql_without_its_client(sys.argv[1])\n"
        + IMPORT_WHOLE_PACKAGE +
        "from pymysql.constants import CLIENT; from pymysql import _auth; from pymysql.charset import charset_by_id\n"
        "assert CLIENT.MULTI_RESULTS and _auth.scramble_native_password and charset_by_id(45).name == 'utf8mb4'\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('pymysql'))\n"
        "assert 'pymysql.connections' not in loaded and 'pymysql.cursors' not in loaded, loaded\n"
        "print(sys.modules['pymysql'].__path__[0])\n"
    )
    # then PyMySQL's constants, scramble and charsets come from the layer, and its client never loads
    assert run_in_layer_python(probe, lib) == str(lib / "pymysql")


def run_in_layer_python(probe: str, lib: Path) -> str:
    """Run `probe` as the launcher runs Python (-I -S, from /), with the layer's lib as argv[1];
    it must succeed. Returns what it printed."""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(lib)], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.xfail(not HAS_MAIN, reason="extension/dbkeeper/main.py not written yet", strict=True)
def test_real_launch_chain_outside_lambda_fails_cleanly_with_json_logs(built_layer: BuiltLayer, tmp_path: Path) -> None:
    # given the unpacked layer and no AWS_LAMBDA_RUNTIME_API, when Lambda would start the launcher
    launcher = built_layer.tree_x86_64 / "extensions" / "dbkeeper"
    bytecode_before = bytecode_files(built_layer.tree_x86_64)
    proc = run_launcher(launcher, cwd=tmp_path)
    # then launcher -> bootstrap -> dbkeeper.main ran: a JSON log line, exit 1, no traceback
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines and all(line.get("level") and line.get("event") for line in lines), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert bytecode_files(built_layer.tree_x86_64) == bytecode_before  # the layer is never written to


def find_python(version: str) -> str | None:
    """An interpreter for `version` (e.g. "3.12"): pythonX.Y on PATH or under pyenv, verified."""
    import glob

    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    candidates += [p for p in (shutil.which(f"python{version}"), f"/usr/bin/python{version}") if p]
    for cand in candidates:
        try:
            out = subprocess.run([cand, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return cand
    return None


# Every module of the extension package (not __main__, which runs main), as the layer ships it.
IMPORT_WHOLE_PACKAGE = (
    "import importlib, pkgutil, dbkeeper\n"
    "for m in pkgutil.walk_packages(dbkeeper.__path__, 'dbkeeper.'):\n"
    "    if not m.name.endswith('__main__'):\n"
    "        importlib.import_module(m.name)\n"
)


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_layer_imports_and_runs_uvloop_on_each_lambda_python(built_layer: BuiltLayer, version: str) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine")
    lib = built_layer.tree_x86_64 / "dbkeeper" / "lib"
    probe = (
        "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, sys.argv[1])\n"
        "import asyncio, uvloop, pymysql\n"
        + (IMPORT_WHOLE_PACKAGE if HAS_MAIN else "")
        + "async def f():\n    await asyncio.sleep(0)\n    return 42\n"
        "assert uvloop.run(f()) == 42\nprint(uvloop.loop.__file__)\n"
    )
    proc = subprocess.run([python, "-I", "-S", "-c", probe, str(lib)], capture_output=True, text=True, timeout=60,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"loop.cpython-{version.replace('.', '')}-x86_64-linux-gnu.so")
