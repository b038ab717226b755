"""The `dbkeeper` fixtures: the built layer's extension, running for real, in front of a real MariaDB."""

from __future__ import annotations

import pytest

from tests.dbkeeper_process import start_dbkeeper
from tests.integration.client_ops import Target, direct_target_of, upstream_prepared


@pytest.fixture(scope="module")
def dbkeeper(built_layer, mariadb):
    from tests.mariadb import free_port

    running = start_dbkeeper(built_layer.tree_x86_64, mariadb, free_port())
    running.wait_for_event("upstream_connected")
    yield running
    running.stop()


@pytest.fixture
def dbkeeper_factory(built_layer, free_port):
    """start(upstream, **env) -> RunningDbkeeper, stopped after the test."""
    started = []

    def start(upstream, freeze=False, **env):
        running = start_dbkeeper(built_layer.tree_x86_64, upstream, free_port(), env, freeze=freeze)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        if running.sandbox is not None:
            running.stop()


# For the client-library tests: the shared server prepared for them (64 MB packets, an extra
# database), reached directly or through dbkeeper. `dbk` is asked for only after `upstream` is
# prepared, so dbkeeper's INIT-time connection already sees the prepared server.
@pytest.fixture(scope="module")
def upstream(mariadb):
    with upstream_prepared(mariadb) as db:
        yield db


@pytest.fixture(scope="module")
def direct(upstream) -> Target:
    return direct_target_of(upstream)


@pytest.fixture(scope="module")
def dbk(upstream, request):
    return request.getfixturevalue("dbkeeper")
