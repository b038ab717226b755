"""Specification of dbkeeper.state_file: what the extension tells the wrapper it serves.

The wrapper's side (reading it, its copy of the path rule) is specified in test_wrapper.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid

import pytest

from dbkeeper.errors import StateFileError
from dbkeeper.state_file import read_state, remove_state, state_path, write_state


@pytest.fixture
def path():
    p = state_path(f"127.0.0.1:state-test-{uuid.uuid4().hex[:12]}")
    try:
        yield p
    finally:
        remove_state(p)


@pytest.mark.parametrize("runtime_api, name", [
    ("127.0.0.1:9001", ".dbkeeper-127.0.0.1_9001.state"),
    ("[::1]:9001", ".dbkeeper-___1__9001.state"),
    ("../../etc/x", ".dbkeeper-.._.._etc_x.state"),
    ("ü", ".dbkeeper-__.state"),  # two UTF-8 bytes
    ("a\udcffb", ".dbkeeper-a_b.state"),  # an undecodable byte from the environment is one byte
])
def test_the_path_is_one_file_in_tmp_named_after_the_runtime_api_byte_by_byte(runtime_api, name):
    assert state_path(runtime_api) == f"/tmp/{name}"


def test_sandboxes_with_different_runtime_apis_never_share_a_file():
    assert state_path("127.0.0.1:9001") != state_path("127.0.0.1:9002")


def test_written_whole_as_key_value_lines_readable_by_this_user_only(path):
    write_state(path, 3306, "/tmp/dbkeeper.sock", 4242)
    with open(path) as f:
        assert f.read() == "port=3306\nsocket=/tmp/dbkeeper.sock\npid=4242\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_state(path) == {"port": "3306", "socket": "/tmp/dbkeeper.sock", "pid": "4242"}
    # nothing else left in /tmp: the temporary file was renamed into place
    assert not [n for n in os.listdir("/tmp") if n.startswith(os.path.basename(path) + ".")]


def test_no_tcp_listener_or_no_socket_are_written_as_zero_and_empty(path):
    write_state(path, 0, "/tmp/s.sock", 1)
    assert read_state(path)["port"] == "0"
    write_state(path, 3306, None, 1)
    assert read_state(path)["socket"] == ""


def test_a_file_already_there_is_replaced_not_followed(path, tmp_path):
    # a symlink planted at the path is replaced by the file, its target left alone
    target = tmp_path / "target"
    target.write_text("untouched")
    os.symlink(target, path)
    write_state(path, 3306, None, 7)
    assert not os.path.islink(path) and read_state(path)["pid"] == "7"
    assert target.read_text() == "untouched"


def test_a_value_with_a_line_break_is_refused(path):
    with pytest.raises(StateFileError):
        write_state(path, 3306, "/tmp/a\nport=1", 7)
    assert not os.path.exists(path)


def test_an_unwritable_place_is_a_state_file_error():
    with pytest.raises(StateFileError, match="cannot write"):
        write_state("/nonexistent-dir/x.state", 3306, None, 7)


def test_removed_unconditionally_or_only_when_it_names_the_given_pid(path):
    write_state(path, 3306, None, 7)
    remove_state(path, pid=8)  # a successor's file: left alone
    assert os.path.exists(path)
    remove_state(path, pid=7)
    assert not os.path.exists(path)
    write_state(path, 3306, None, 7)
    remove_state(path)  # at start: whatever is there is a predecessor's
    assert not os.path.exists(path)
    remove_state(path)  # nothing there: fine


def test_the_module_is_cheap_on_the_cold_start_path():
    # written before registering: it must load nothing beyond what the entry point already has
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import os, time, dbkeeper.config, dbkeeper.errors, dbkeeper.events, dbkeeper.extensions_api, "
            "dbkeeper.log; before = set(sys.modules); "
            "import dbkeeper.state_file; print(sorted(set(sys.modules) - before))")
    extension = os.path.join(os.path.dirname(__file__), "..", "..", "extension")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, extension], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['dbkeeper.state_file']"
