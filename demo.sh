#!/usr/bin/env bash
# The main job (README.md): build the layer and run the sample function in local Lambda sandboxes,
# without the layer and with it, against a throwaway MariaDB (or the DB in DB_HOST/DB_PORT/DB_USER/
# DB_PASSWORD/DB_NAME), then print the side-by-side table. Extra arguments go to `python -m demo`.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")"
scripts/setup.sh >&2
./build.sh >&2
exec ./.venv/bin/python -m demo "$@"
