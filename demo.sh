#!/usr/bin/env bash
# The main job (README.md): build the layer and run the sample function in local Lambda sandboxes,
# without the layer and with it, at 128 MB and 1,769 MB, against a throwaway MariaDB that requires
# TLS behind an emulated 1 ms network (or --loopback; or the DB in DB_HOST and friends: see
# demo/README.md), then print the side-by-side table. Extra arguments go to `python -m demo`.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")"
scripts/setup.sh >&2 || { echo "demo: scripts/setup.sh failed (its output is above)" >&2; exit 1; }
./build.sh >&2 || { echo "demo: ./build.sh failed (its output is above)" >&2; exit 1; }
exec ./.venv/bin/python -m demo "$@"
