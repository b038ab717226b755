"""The dbkeeper demo: the same ordinary PyMySQL function, without and with the dbkeeper layer.

    ./build.sh && ./.venv/bin/python -m demo [--sandboxes 4] [--invocations 50] [--json out.json]

Runs sample_function/ (both handlers) in several local Lambda sandboxes (lambda_sandbox), reclaims
them the way Lambda does (frozen, then destroyed without a FIN reaching the database), and prints a
side-by-side table: invocations, upstream connections opened, invoke latency, and connections the
database still holds after the sandboxes are gone. See demo/README.md.
"""
