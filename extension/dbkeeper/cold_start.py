"""Import arrangements for the extension process only, made by the layer's bootstrap before
anything else is imported (never by the package itself: a process that uses PyMySQL's client,
such as the tests, must get the real package)."""

from __future__ import annotations

import importlib.machinery
import sys


def register_pymysql_without_its_client(lib: str) -> bool:
    """dbkeeper uses PyMySQL's constants, charsets and scramble functions, never its client. The
    package's __init__ imports the client (connections, cursors, converters: ~5 ms of the cold
    start), so the package is registered as its directory alone; its submodules import as usual.
    Returns whether it did (False: PyMySQL is not in `lib`, or already imported)."""
    if "pymysql" in sys.modules:
        return False
    spec = importlib.machinery.PathFinder.find_spec("pymysql", [lib])
    if spec is None or not spec.submodule_search_locations:
        return False
    package = type(sys)("pymysql")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    sys.modules["pymysql"] = package
    return True
