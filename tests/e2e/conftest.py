"""End-to-end: the built layer attached to a real function (awslambdaric runtime) in the project's
Lambda sandbox ([sandbox] in a test's id), and again in the real RIE ([rie]) when DBKEEPER_RIE names an
aws-lambda-rie binary. The RIE runs as it is: no freeze (it never freezes) and no reclaim; a test that
needs either skips in that variant and says so.

The layer attached is the one ./build.sh builds from this checkout (the `built_layer` fixture), or, when
DBKEEPER_TEST_LAYER_TREE names a directory, that unpacked layer tree (the `dist/layer-x86_64` of another
checkout's build): to run the same tests against another version of dbkeeper, e.g. an older commit's,
for a before/after comparison. The report header says which."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lambda_sandbox import Sandbox
from tests.dbkeeper_process import extension_python, state_file_of

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FUNCTION = REPO / "sample_function"
WRAPPER = "/opt/dbkeeper-wrapper"


def pytest_report_header(config):
    rie = os.environ.get("DBKEEPER_RIE")
    reason = _rie_skip_reason()
    return [f"e2e environments: [sandbox] lambda_sandbox (freeze by {_freeze_mechanism()}); [rie] "
            + (f"aws-lambda-rie {rie}" if reason is None else f"skipped ({reason})"),
            f"e2e layer: {os.environ.get(LAYER_TREE_ENV) or 'built from this checkout (dist/layer-x86_64)'}"]


LAYER_TREE_ENV = "DBKEEPER_TEST_LAYER_TREE"


def layer_tree(built_layer) -> Path:
    """/opt of a sandbox with the layer: DBKEEPER_TEST_LAYER_TREE if set, else this checkout's build."""
    other = os.environ.get(LAYER_TREE_ENV)
    if not other:
        return built_layer.tree_x86_64
    tree = Path(other)
    if not (tree / "extensions" / "dbkeeper").is_file():
        pytest.fail(f"{LAYER_TREE_ENV}={other} is not an unpacked dbkeeper layer (no extensions/dbkeeper)",
                    pytrace=False)
    return tree


def _freeze_mechanism() -> str:
    from lambda_sandbox.cgroups import unavailable_reason

    reason = unavailable_reason()
    return "the cgroup v1 freezer" if reason is None else f"SIGSTOP: {reason}"


def _rie_skip_reason() -> str | None:
    if not os.environ.get("DBKEEPER_RIE"):
        return "DBKEEPER_RIE is not set (no aws-lambda-rie binary on this machine)"
    if os.geteuid() != 0:
        return "the RIE needs a private mount namespace for /opt and /var/task: run as root"
    return None


@pytest.fixture(params=["sandbox", "rie"])
def emulator(request):
    """Which Lambda emulator runs the layer: the project's sandbox, or the real RIE."""
    if request.param == "rie":
        reason = _rie_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param


def skip_under_the_rie(emulator: str, why: str) -> None:
    """For a test of something only the project's sandbox models (freeze, reclaim)."""
    if emulator == "rie":
        pytest.skip(f"not under the real RIE: {why}")


@pytest.fixture
def lambda_function(emulator, built_layer, free_port, tmp_path):
    """make(upstream, handler=..., task_dir=..., layer=True, freeze=True, netns=False, **env) -> started sandbox."""
    made = []

    def make(upstream, handler="app.handler_connect_per_invoke", task_dir=SAMPLE_FUNCTION, layer=True,
             freeze=True, netns=False, timeout_s=15, **env):
        socket_path = f"/tmp/dbk-{os.getpid()}-{len(made)}-{free_port()}.sock"
        db_host = "127.0.0.1"
        function_env = {"DB_HOST": db_host, "DB_PORT": str(upstream.port), "DB_USER": upstream.user,
                        "DB_PASSWORD": upstream.password, "DB_NAME": upstream.database}
        if layer:
            function_env.update({"AWS_LAMBDA_EXEC_WRAPPER": WRAPPER, "DBKEEPER_SOCKET": socket_path,
                                 "DBKEEPER_LISTEN_PORT": "3306" if netns else str(free_port()),
                                 "DBKEEPER_PYTHON": extension_python()})
        function_env.update(env)
        opt_dir = layer_tree(built_layer) if layer else tmp_path / "empty-opt"
        opt_dir.mkdir(exist_ok=True)
        if emulator == "rie":
            from lambda_sandbox import RieSandbox

            # as the RIE runs: never frozen
            sandbox = RieSandbox(os.environ["DBKEEPER_RIE"], str(opt_dir), str(task_dir), handler, env=function_env,
                                 timeout_s=timeout_s, netns=netns)
            print(f"environment: aws-lambda-rie {sandbox.rie_binary}")
        else:
            sandbox = Sandbox(str(opt_dir), str(task_dir), handler, env=function_env, freeze=freeze, netns=netns,
                              timeout_s=timeout_s)
        sandbox.start()
        if emulator == "sandbox":
            print(f"environment: lambda_sandbox, freeze={freeze} by {sandbox.freeze_mechanism}")
        # In its own network namespace the sandbox reaches the host's DB at host_address (INIT is
        # lazy, so the environment can still be completed here).
        sandbox.env["DB_HOST"] = sandbox.host_address
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        try:
            sandbox.close()
        except Exception:  # already shut down or reclaimed
            pass
        # a sandbox reclaimed without SHUTDOWN leaves its extension's state file, as on Lambda
        # (where /tmp goes with the sandbox); here /tmp is the host's (the RIE has a private one)
        if getattr(sandbox, "api_address", ""):
            state_file_of(sandbox.api_address).unlink(missing_ok=True)
