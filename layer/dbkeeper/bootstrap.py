# Started by /opt/extensions/dbkeeper as `python -I -S bootstrap.py <launcher path> [args]`.
# Kept tiny: it is on the cold-start path.
import os.path
import sys

# No .pyc writes: /opt is read-only on Lambda, and a local run (dist/layer-*/ as /opt) must not
# leave __pycache__ in the tree or get faster than Lambda's cold start.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

from dbkeeper.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
