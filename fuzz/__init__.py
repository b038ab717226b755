"""dbkeeper's fuzzers: in-process (coverage-guided, atheris) over protocol/ and the relay, and
live (a socket fuzzer against the built extension with a real MariaDB behind it).
Run `./.venv/bin/python -m fuzz --help`; see fuzz/README.md."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _path in (str(REPO), str(REPO / "extension")):  # the package from source; tests.mariadb & co
    if _path not in sys.path:
        sys.path.insert(0, _path)
