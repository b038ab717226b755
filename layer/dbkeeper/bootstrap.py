# Started by /opt/extensions/dbkeeper as `python -I -S bootstrap.py <launcher path> [args]`.
# Kept tiny: it is on the cold-start path.
import os
import sys

# The layer ships its bytecode (built for each supported Python); never write any: /opt is
# read-only on Lambda, and a local run (dist/layer-*/ as /opt) must leave the tree as built.
sys.dont_write_bytecode = True
LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
sys.path.insert(0, LIB)

from dbkeeper.cold_start import register_pymysql_without_its_client  # noqa: E402

register_pymysql_without_its_client(LIB)

from dbkeeper.main import main  # noqa: E402

code = main(sys.argv[1:])
# Every log line is already written (unbuffered). Interpreter teardown would spend ~20 ms of the
# SHUTDOWN budget on nothing, so the exit is immediate.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
