#!/usr/bin/env bash
# Build the dbkeeper Lambda layer:
#   dist/dbkeeper-layer-x86_64.zip   dist/layer-x86_64/   (unpacked tree; tests use it as /opt)
#   dist/dbkeeper-layer-arm64.zip    dist/layer-arm64/
#   dist/dbkeeper-layer-full-x86_64.zip, dist/dbkeeper-layer-full-arm64.zip (+ dist/layer-full-*/):
#   the same plus botocore and its dependencies (extension/requirements-full.txt), for images whose
#   Python has no AWS SDK; botocore's service models are cut to the services dbkeeper calls
#
# Layout (zip root = /opt), see docs/CONVENTIONS.md:
#   extensions/dbkeeper  dbkeeper/bootstrap.py  dbkeeper/lib/{dbkeeper,pymysql,uvloop,...}
#   dbkeeper/rds-ca-bundle.pem (layer/dbkeeper/rds-ca-bundle.pem: Amazon RDS's root CAs, the CA of
#   DBKEEPER_DB_IAM_AUTH=true when DBKEEPER_DB_TLS_CA is unset; provenance in docs/AWS.md)
#   dbkeeper-wrapper (if layer/dbkeeper-wrapper exists)
#
# Dependencies (extension/requirements.txt) come from manylinux wheels for cp311/cp312/cp313 of
# each architecture, downloaded once into .cache/wheels/ (the only network use: PyPI), never
# from this machine's site-packages. Bytecode (.pyc, unchecked-hash) is compiled for each Python
# version with that version's interpreter: Lambda's /opt is read-only, so it could not be written
# there at run time, and compiling on every cold start costs the function's CPU.
#
# Usage: ./build.sh            (from any directory; idempotent)
# Env:   PYTHON=...            interpreter used to run pip and build the zips
#        RDS_CA_BUNDLE=...     a CA file to ship as /opt/dbkeeper/rds-ca-bundle.pem instead of
#                              layer/dbkeeper/rds-ca-bundle.pem (e.g. a newer copy of Amazon RDS's
#                              global-bundle.pem); not fetched here
#        SOURCE_DATE_EPOCH=... timestamp for zip entries (default 1980-01-01, the zip minimum)
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
cd "$ROOT"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
fi

PY_VERSIONS=(3.11 3.12 3.13)
# layer arch name : manylinux machine name
ARCHES=(x86_64:x86_64 arm64:aarch64)
REQS="$ROOT/extension/requirements.txt"
FULL_REQS="$ROOT/extension/requirements-full.txt"
CACHE="$ROOT/.cache/wheels"
DIST="$ROOT/dist"

log() { printf 'build.sh: %s\n' "$*" >&2; }

[[ -f "$REQS" ]] || { log "missing $REQS"; exit 1; }
[[ -x "$ROOT/layer/extensions/dbkeeper" ]] || { log "layer/extensions/dbkeeper missing or not executable"; exit 1; }
[[ -f "$ROOT/layer/dbkeeper/bootstrap.py" ]] || { log "layer/dbkeeper/bootstrap.py missing"; exit 1; }
[[ -f "$ROOT/layer/dbkeeper/rds-ca-bundle.pem" ]] || { log "layer/dbkeeper/rds-ca-bundle.pem missing"; exit 1; }
if [[ -n "${RDS_CA_BUNDLE:-}" && ! -f "$RDS_CA_BUNDLE" ]]; then
    log "RDS_CA_BUNDLE=$RDS_CA_BUNDLE is not a file"; exit 1
fi
if [[ -e "$ROOT/layer/python" ]]; then
    log "layer/python must not exist: /opt/python is the function's sys.path"; exit 1
fi
if [[ ! -f "$ROOT/extension/dbkeeper/main.py" ]]; then
    log "WARNING: extension/dbkeeper/main.py does not exist yet: the layer will not start"
fi

# ---------------------------------------------------------------- 1. wheels (cached)
req_hash="$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest()[:16])' "$REQS")"
for arch_pair in "${ARCHES[@]}"; do
    machine="${arch_pair#*:}"
    for pyv in "${PY_VERSIONS[@]}"; do
        tag="cp${pyv/./}"
        dest="$CACHE/${machine}-${tag}"
        stamp="$dest/.complete-$req_hash"
        if [[ -f "$stamp" ]]; then
            continue
        fi
        log "downloading wheels for $machine $tag"
        rm -rf "$dest"
        mkdir -p "$dest"
        "$PY" -m pip download --quiet --disable-pip-version-check \
            --only-binary=:all: --no-deps --implementation cp \
            --platform "manylinux2014_${machine}" --python-version "$pyv" \
            --dest "$dest" -r "$REQS" 2> >(grep -v "is neither a file nor a directory" >&2)
        touch "$stamp"
    done
done

# pure-Python wheels of the full variant: one set for every architecture and Python version
full_hash="$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest()[:16])' "$FULL_REQS")"
FULL_WHEELS="$CACHE/full-py3"
if [[ ! -f "$FULL_WHEELS/.complete-$full_hash" ]]; then
    log "downloading wheels for the full variant"
    rm -rf "$FULL_WHEELS"
    mkdir -p "$FULL_WHEELS"
    "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
        --dest "$FULL_WHEELS" -r "$FULL_REQS" 2> >(grep -v "is neither a file nor a directory" >&2)
    touch "$FULL_WHEELS/.complete-$full_hash"
fi

# ---------------------------------------------------------------- 2. unpacked trees + zips
mkdir -p "$DIST"
for arch_pair in "${ARCHES[@]}"; do
    arch="${arch_pair%%:*}"
    machine="${arch_pair#*:}"
    wheel_dirs=()
    for pyv in "${PY_VERSIONS[@]}"; do
        wheel_dirs+=("$CACHE/${machine}-cp${pyv/./}")
    done
    for variant in default full; do
    extra=()
    [[ $variant == full ]] && extra=("$FULL_WHEELS")
    "$PY" - "$ROOT" "$arch" "$machine" "$variant" "${wheel_dirs[@]}" "${extra[@]}" <<'PYEOF'
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
import zipfile

root, arch, machine, variant, *wheel_dirs = sys.argv[1:]
dist = os.path.join(root, "dist")
suffix = "" if variant == "default" else f"{variant}-"
final_tree = os.path.join(dist, f"layer-{suffix}{arch}")
final_zip = os.path.join(dist, f"dbkeeper-layer-{suffix}{arch}.zip")
# botocore's service models: only those of the services the extension calls (aws/), and the shared files
BOTOCORE_SERVICES = {"secretsmanager", "dynamodb", "rds", "sts"}
tree = f"{final_tree}.tmp-{os.getpid()}"  # unique: builds may run side by side
shutil.rmtree(tree, ignore_errors=True)
lib = os.path.join(tree, "dbkeeper", "lib")
os.makedirs(lib)

DROP_DIRS = {"__pycache__", "tests", "test"}
DROP_SUFFIXES = (".pyc", ".pyo", ".pyi", ".pxd", ".pyx", ".pxi", ".c", ".h", ".cpp")
DROP_FILES = {"_testbase.py"}  # uvloop's test helper


def dropped(relpath: str) -> bool:
    parts = relpath.split("/")
    if any(p in DROP_DIRS for p in parts[:-1]):
        return True
    if parts[0].endswith(".data"):
        return True  # a wheel's scripts/headers (jmespath's jp.py): nothing the extension imports
    if parts[:2] == ["botocore", "data"] and len(parts) > 3 and parts[2] not in BOTOCORE_SERVICES:
        return True
    name = parts[-1]
    return name in DROP_FILES or name.endswith(DROP_SUFFIXES)


# --- layer skeleton: layer/ is /opt (launcher, bootstrap, wrapper, ...)
def copy_tree(src: str, dst: str) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = os.path.relpath(dirpath, src)
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            target = os.path.normpath(os.path.join(dst, rel, name))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(dirpath, name), target)


copy_tree(os.path.join(root, "layer"), tree)  # includes dbkeeper/rds-ca-bundle.pem
if os.environ.get("RDS_CA_BUNDLE"):  # replaces the repository's bundle
    shutil.copyfile(os.environ["RDS_CA_BUNDLE"], os.path.join(tree, "dbkeeper", "rds-ca-bundle.pem"))

# --- vendored wheels: all Python versions into one lib/ (extension modules differ by name)
owner: dict[str, tuple[str, bytes]] = {}
shared_objects: list[str] = []
for wdir in wheel_dirs:
    wheels = sorted(f for f in os.listdir(wdir) if f.endswith(".whl"))
    if not wheels:
        sys.exit(f"build.sh: no wheels in {wdir}")
    for whl in wheels:
        with zipfile.ZipFile(os.path.join(wdir, whl)) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or dropped(name):
                    continue
                data = zf.read(info)
                prev = owner.get(name)
                if prev is not None and prev[1] != data and ".dist-info/" not in name:
                    sys.exit(f"build.sh: {name} differs between {prev[0]} and {whl}")
                owner[name] = (whl, data)
                target = os.path.join(lib, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as fh:
                    fh.write(data)
                if name.endswith(".so"):
                    shared_objects.append(target)

# --- strip debug info from the extension modules (uvloop: ~16 MB -> ~3 MB each; Lambda downloads
# and unpacks the layer at every cold sandbox). Same input -> same output: still deterministic.
strip_tool = None
candidates = [f"{machine}-linux-gnu-strip"]
if platform.machine() == machine:
    candidates.append("strip")
for cand in candidates:
    strip_tool = shutil.which(cand)
    if strip_tool:
        break
if shared_objects and strip_tool is None:
    print(
        f"build.sh: WARNING: no {' or '.join(candidates)}: {machine} .so files keep their debug info "
        f"(apt-get install binutils binutils-{machine.replace('_', '-')}-linux-gnu)",
        file=sys.stderr,
    )
elif shared_objects:
    subprocess.run([strip_tool, "--strip-debug", *shared_objects], check=True)

# --- the extension package itself
pkg = os.path.join(root, "extension", "dbkeeper")
if not os.path.isdir(pkg):
    sys.exit("build.sh: extension/dbkeeper is missing")
copy_tree(pkg, os.path.join(lib, "dbkeeper"))

# --- bytecode for every Python version the layer supports. /opt is read-only on Lambda, so
# without it each cold start would compile the package and its dependencies from source (tens of
# ms of the function's CPU share). unchecked-hash: valid whatever the files' timestamps, and
# deterministic. A version whose interpreter is not on this machine is only warned about.
def find_interpreter(version: str) -> str | None:
    """pythonX.Y on PATH, else pyenv's or the system's, if it really is that version."""
    import glob

    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True)
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    check = f"import sys; sys.exit(sys.version_info[:2] != {tuple(map(int, version.split('.')))})"
    for candidate in filter(None, candidates):
        if os.access(candidate, os.X_OK) and subprocess.run([candidate, "-c", check], capture_output=True).returncode == 0:
            return candidate
    return None


for version in ("3.11", "3.12", "3.13"):
    interpreter = find_interpreter(version)
    if interpreter is None:
        print(f"build.sh: WARNING: no python{version}: its .pyc files are not in the layer", file=sys.stderr)
        continue
    subprocess.run([interpreter, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    "-d", "/opt/dbkeeper/lib", lib], check=True, stdout=subprocess.DEVNULL)

# --- modes (tree and zip agree): 0755 for the launcher, the wrapper and .so files; 0644 else
EXEC = {"extensions/dbkeeper", "dbkeeper-wrapper"}


def mode_for(rel: str) -> int:
    return 0o755 if rel in EXEC or rel.endswith(".so") else 0o644


entries = []  # (relpath, is_dir)
for dirpath, dirnames, filenames in os.walk(tree):
    dirnames.sort()
    rel_dir = os.path.relpath(dirpath, tree).replace(os.sep, "/")
    if rel_dir != ".":
        os.chmod(dirpath, 0o755)
        entries.append((rel_dir, True))
    for name in filenames:
        rel = name if rel_dir == "." else f"{rel_dir}/{name}"
        os.chmod(os.path.join(dirpath, name), mode_for(rel))
        entries.append((rel, False))
os.chmod(tree, 0o755)
entries.sort(key=lambda e: e[0] + "/" if e[1] else e[0])  # by the name stored in the zip

# --- deterministic zip: sorted entries, fixed timestamps, unix modes, deflate level 9
epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))
stamp = time.gmtime(max(epoch, 315532800))[:6]
tmp_zip = f"{final_zip}.tmp-{os.getpid()}"
with zipfile.ZipFile(tmp_zip, "w") as zf:
    for rel, is_dir in entries:
        if is_dir:
            info = zipfile.ZipInfo(rel + "/", date_time=stamp)
            info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            zf.writestr(info, b"")
            continue
        info = zipfile.ZipInfo(rel, date_time=stamp)
        info.external_attr = (stat.S_IFREG | mode_for(rel)) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3
        with open(os.path.join(tree, rel), "rb") as fh:
            zf.writestr(info, fh.read(), compresslevel=9)
os.replace(tmp_zip, final_zip)

# --- swap the unpacked tree in (a process using the old one keeps its files until it is done)
old = f"{final_tree}.old-{os.getpid()}"
shutil.rmtree(old, ignore_errors=True)
if os.path.exists(final_tree):
    os.rename(final_tree, old)
os.rename(tree, final_tree)
shutil.rmtree(old, ignore_errors=True)
PYEOF
    done
done

# ---------------------------------------------------------------- 3. report
bundle_source="layer/dbkeeper/rds-ca-bundle.pem"
[[ -n "${RDS_CA_BUNDLE:-}" ]] && bundle_source="RDS_CA_BUNDLE=$RDS_CA_BUNDLE"
printf 'RDS CA bundle in the layers: dbkeeper/rds-ca-bundle.pem, %d bytes (from %s)\n' \
    "$(stat -c %s "$DIST/layer-x86_64/dbkeeper/rds-ca-bundle.pem")" "$bundle_source"
for name in "" full-; do
for arch_pair in "${ARCHES[@]}"; do
    arch="${arch_pair%%:*}"
    z="$DIST/dbkeeper-layer-${name}${arch}.zip"
    size=$(stat -c %s "$z")
    unpacked=$(du -sb "$DIST/layer-${name}${arch}" | cut -f1)
    printf '%-42s %9d bytes (%.2f MiB zipped, %.2f MiB unpacked)\n' \
        "dist/dbkeeper-layer-${name}${arch}.zip" "$size" \
        "$(awk "BEGIN{print $size/1048576}")" "$(awk "BEGIN{print $unpacked/1048576}")"
done
done
