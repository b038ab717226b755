"""The atheris process: `python -m fuzz.worker [libFuzzer arguments]`. Started by inprocess.py
(libFuzzer ends the process when it is done or finds something, so it gets a process of its own).
Only dbkeeper's modules are instrumented: coverage guidance follows the code under test."""

import sys

import atheris

import fuzz  # noqa: F401  (sys.path)

with atheris.instrument_imports(include=["dbkeeper"]):
    from fuzz import targets


def test_one_input(data: bytes) -> None:
    targets.run_one(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
