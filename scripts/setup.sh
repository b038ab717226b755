#!/usr/bin/env bash
# Installs what dbkeeper's build, demo and tests need, only what is missing: Debian packages
# (apt-get: mariadb-server, socat, iproute2, build tools, libmariadb-dev) and the Python
# environment (.venv with pip install -r requirements-dev.txt). Idempotent; run as root on a
# fresh machine. Called by ./test.sh, ./demo.sh and .ci/run.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

step_start=
step() {
    step_start=$EPOCHREALTIME
    printf '=== %s\n' "$*"
}
step_done() {
    printf '=== done in %.1fs\n' "$(awk "BEGIN{print $EPOCHREALTIME - $step_start}")"
}

# ------------------------------------------------------------------ 1. system packages
step "setup: system packages"
missing=()
need_cmd() {  # need_cmd COMMAND PACKAGE: install PACKAGE unless COMMAND is found (also in sbin)
    if ! command -v "$1" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$1" && ! -x "/usr/bin/$1" ]]; then
        missing+=("$2")
    fi
}
need_pkg() {  # need_pkg PACKAGE: install unless dpkg says it is installed
    if ! dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$1")
    fi
}
need_cmd mariadbd mariadb-server                  # tests/mariadb.py: throwaway servers
need_cmd mariadb-install-db mariadb-server
need_cmd socat socat
need_cmd openssl openssl                          # certificates for the upstream TLS tests
need_cmd shellcheck shellcheck                    # lints the launcher and the wrapper
need_cmd ip iproute2                              # network-namespace tests
need_cmd setpriv util-linux                       # tests/mariadb.py: servers die with the run
need_cmd zip zip
need_cmd unzip unzip
need_cmd gcc build-essential                      # mysqlclient is built from source
need_cmd make build-essential
need_cmd pkg-config pkg-config
need_pkg libmariadb-dev                           # mysqlclient headers and library
need_cmd strip binutils                           # build.sh strips uvloop's debug info
need_cmd aarch64-linux-gnu-strip binutils-aarch64-linux-gnu
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ! python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
    missing+=(python3-dev)
fi
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
    echo "all present"
fi
step_done

# ------------------------------------------------------------------ 2. Python environment
step "setup: python environment (.venv, requirements-dev.txt)"
if [[ ! -x .venv/bin/python ]]; then
    PY_FOR_VENV="$(command -v python3.11 || command -v python3)"
    echo "creating .venv with $PY_FOR_VENV"
    "$PY_FOR_VENV" -m venv .venv
fi
./.venv/bin/python --version
./.venv/bin/python -m pip install -q -r requirements-dev.txt </dev/null 2> >(grep -v "is neither a file nor a directory" >&2)
step_done

