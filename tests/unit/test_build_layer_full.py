"""The AWS SDK for the extension's isolated interpreter: the `full` layer variant vendors botocore
(service models cut to the services dbkeeper calls); the default one takes the runtime's, and only
the SDK's own packages from it: the function's packages never become importable."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BuiltLayer

SDK_TOP_LEVEL = {"botocore", "jmespath", "dateutil", "six.py", "urllib3"}


def full_zip(built_layer: BuiltLayer, arch: str) -> Path:
    return built_layer.zip_x86_64.parent / f"dbkeeper-layer-full-{arch}.zip"


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_the_full_variant_adds_botocore_and_its_dependencies_and_nothing_else(built_layer: BuiltLayer, arch: str):
    default = zipfile.ZipFile(built_layer.zip_x86_64 if arch == "x86_64" else built_layer.zip_arm64).namelist()
    full = zipfile.ZipFile(full_zip(built_layer, arch)).namelist()
    top = lambda names: {n.split("/")[2] for n in names if n.startswith("dbkeeper/lib/") and n.count("/") >= 2}  # noqa: E731
    assert not top(default) & SDK_TOP_LEVEL
    added = {name for name in top(full) - top(default) if ".dist-info" not in name and name != "__pycache__"}
    assert added == SDK_TOP_LEVEL
    services = {n.split("/")[4] for n in full if n.startswith("dbkeeper/lib/botocore/data/") and n.count("/") >= 6}
    assert services == {"secretsmanager", "dynamodb", "rds", "sts"}
    assert "dbkeeper/lib/botocore/data/endpoints.json" in full
    assert set(default) <= set(full)  # otherwise the same layer


def run(python: str, probe: str, lib: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-I", "-S", "-c", probe, str(lib), *args], capture_output=True, text=True,
                          timeout=120, cwd="/")


CLIENTS = (
    "import sys; sys.dont_write_bytecode = True; sys.path.insert(0, sys.argv[1])\n"
    "from dbkeeper.aws import sdk\n"
    "source = sdk.load(sys.argv[2] if len(sys.argv) > 2 else None)\n"
    "import botocore.session\n"
    "session = botocore.session.get_session()\n"
    "for service in ('secretsmanager', 'dynamodb', 'rds', 'sts'):\n"
    "    client = session.create_client(service, region_name='eu-west-1', aws_access_key_id='a',\n"
    "                                   aws_secret_access_key='b')\n"
    "token = session.create_client('rds', region_name='eu-west-1', aws_access_key_id='a', aws_secret_access_key='b')"
    ".generate_db_auth_token('db.example', 3306, 'app')\n"
    "assert token.startswith('db.example:3306/?Action=connect&DBUser=app'), token\n"
    "print(source, botocore.__file__)\n"
)


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_the_full_variant_makes_every_client_dbkeeper_needs_on_each_lambda_python(built_layer: BuiltLayer,
                                                                                  version: str):
    from tests.unit.test_build_layer import find_python

    python = find_python(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine")
    lib = built_layer.tree_x86_64.parent / "layer-full-x86_64" / "dbkeeper" / "lib"
    proc = run(python, CLIENTS, lib)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["layer", str(lib / "botocore" / "__init__.py")]


def test_the_default_layer_takes_only_the_sdk_from_a_site_packages_directory(built_layer: BuiltLayer):
    # given a directory that holds botocore and much else (this venv's site-packages, as a
    # container image's /var/lang/lib/python3.X/site-packages would hold the function's packages)
    site = sysconfig.get_paths()["purelib"]
    assert (Path(site) / "botocore").is_dir() and (Path(site) / "pytest").is_dir()
    lib = built_layer.tree_x86_64 / "dbkeeper" / "lib"
    proc = run(sys.executable, CLIENTS + (
        "import importlib.util\n"
        "for name in ('pytest', 'moto', 'boto3', 'requests', 'flask'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "assert all(not p.startswith(sys.argv[2]) for p in sys.path)\n"
    ), lib, site)
    # then botocore comes from there, and nothing else of it is importable
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [site, str(Path(site) / "botocore" / "__init__.py")]


def test_without_any_sdk_the_error_says_where_it_looked_and_what_to_use(built_layer: BuiltLayer, tmp_path: Path):
    lib = built_layer.tree_x86_64 / "dbkeeper" / "lib"
    proc = run(sys.executable, "import sys; sys.path.insert(0, sys.argv[1])\n"
                               "from dbkeeper.aws import sdk\n"
                               "try:\n    sdk.load(sys.argv[2])\n"
                               "except sdk.AwsError as exc:\n    print(exc)\n", lib, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path) in proc.stdout and "/var/lang/lib/python3.11/site-packages" in proc.stdout
    assert "dbkeeper-full" in proc.stdout or "full" in proc.stdout
