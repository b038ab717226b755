#!/usr/bin/env bash
# The test command (README.md): installs what is missing, builds the layer, runs every tier of
# tests (unit, integration against throwaway MariaDB servers, end-to-end in the local Lambda
# sandbox; under the real RIE too when DBKEEPER_RIE=/path/to/aws-lambda-rie). Extra arguments go
# to pytest, e.g. ./test.sh tests/unit -k config
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")"
scripts/setup.sh >&2
./build.sh >&2
exec ./.venv/bin/python -m pytest -q "$@"
