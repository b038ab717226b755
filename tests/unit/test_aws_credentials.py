"""The secret's rotation rules, with Secrets Manager replaced by a table of versions (the real
service is exercised by tests/integration/test_aws_secret.py against moto's server)."""

import asyncio
import json

import pytest

from dbkeeper.aws import credentials as aws_credentials
from dbkeeper.aws.sdk import AwsError
from dbkeeper.config import Config
from dbkeeper.credentials import make
from dbkeeper.log import Logger
from dbkeeper.protocol.auth import native_proof


class Versions:
    """Secrets Manager's answers: stage -> secret JSON; counts the calls."""

    def __init__(self, **stages):
        self.stages = stages
        self.calls = []
        self.source = "test"

    def run(self, function, *args):
        return asyncio.get_running_loop().run_in_executor(None, function, *args)

    def call(self, service, operation, SecretId, VersionStage):
        self.calls.append(VersionStage)
        if VersionStage not in self.stages:
            raise AwsError("no such version", "ResourceNotFoundException")
        return {"SecretString": json.dumps(self.stages[VersionStage])}


def secret(password, **more):
    return {"username": "app", "password": password, "host": "db.example", "port": 3306, "dbname": "appdb", **more}


@pytest.fixture
def provider(monkeypatch):
    def build(versions: Versions, **env):
        monkeypatch.setattr(aws_credentials, "shared", lambda config, log: versions)
        config = Config.from_environ({"DBKEEPER_DB_SECRET": "db", **env})
        return make(config, Logger("error", fd=2))
    return build


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_first_connect_reads_only_the_current_version_and_takes_every_field_from_it(provider):
    versions = Versions(AWSCURRENT=secret("one"), AWSPREVIOUS=secret("zero"))
    credentials, _ = provider(versions)
    target = run(credentials.get())
    assert (target.host, target.port, target.user, target.password, target.database, target.source) == (
        "db.example", 3306, "app", "one", "appdb", "secret:AWSCURRENT")
    assert versions.calls == ["AWSCURRENT"]


def test_a_field_the_secret_lacks_comes_from_the_settings(provider):
    credentials, _ = provider(Versions(AWSCURRENT={"password": "only"}), DB_HOST="from-env", DB_USER="u", DB_NAME="d")
    target = run(credentials.get())
    assert (target.host, target.port, target.user, target.database, target.password) == (
        "from-env", 3306, "u", "d", "only")


def test_a_refusal_reads_the_secret_again_once_then_tries_each_version(provider):
    async def scenario():
        versions = Versions(AWSCURRENT=secret("old"))
        credentials, _ = provider(versions)
        first = await credentials.get()
        # the rotation: the database wants the pending password, the secret is not finished yet
        versions.stages = {"AWSCURRENT": secret("old"), "AWSPENDING": secret("new")}
        assert credentials.invalidate(first) is True          # read it again
        second = await credentials.get()
        assert second.password == "new" and second.source == "secret:AWSPENDING"
        assert versions.calls == ["AWSCURRENT", "AWSCURRENT", "AWSPREVIOUS", "AWSPENDING"]
        # a password that is wrong whatever the secret says: one read per set of versions, then no retry
        assert credentials.invalidate(second) is False
        return versions
    run(scenario())


def test_after_the_rotation_finished_an_old_copy_is_replaced_by_the_current_version(provider):
    async def scenario():
        versions = Versions(AWSCURRENT=secret("old"))
        credentials, _ = provider(versions)
        old = await credentials.get()
        versions.stages = {"AWSCURRENT": secret("new"), "AWSPREVIOUS": secret("old")}
        assert credentials.invalidate(old)
        assert (await credentials.get()).password == "new"
    run(scenario())


def test_the_function_logs_in_with_the_current_or_the_previous_password_of_the_secret(provider):
    async def scenario():
        versions = Versions(AWSCURRENT=secret("new"), AWSPREVIOUS=secret("old"))
        _, local = provider(versions)
        scramble = b"s" * 20
        assert await local.verify("app", scramble, native_proof("new", scramble))
        assert await local.verify("app", scramble, native_proof("old", scramble))
        assert versions.calls == ["AWSCURRENT", "AWSPREVIOUS"]
        # a wrong password makes dbkeeper read the secret again (it may have been rotated since
        # dbkeeper's copy was read), once per login, at most one read a second
        assert not await local.verify("app", scramble, native_proof("other", scramble))
        assert versions.calls.count("AWSCURRENT") == 2
        assert not await local.verify("root", scramble, native_proof("new", scramble))
        assert versions.calls.count("AWSCURRENT") == 3
    run(scenario())


def test_a_client_newer_than_dbkeepers_copy_makes_it_read_the_secret_again(provider, monkeypatch):
    async def scenario():
        clock = [100.0]
        monkeypatch.setattr(aws_credentials.time, "monotonic", lambda: clock[0])
        versions = Versions(AWSCURRENT=secret("old"))
        _, local = provider(versions)
        scramble = b"s" * 20
        assert await local.verify("app", scramble, native_proof("old", scramble))
        versions.stages = {"AWSCURRENT": secret("new"), "AWSPREVIOUS": secret("old")}
        clock[0] += 5  # the function read the rotated secret, then connected
        assert await local.verify("app", scramble, native_proof("new", scramble))
        assert versions.calls.count("AWSCURRENT") == 2
    run(scenario())


def test_the_local_password_from_a_key_of_another_secret(provider, monkeypatch):
    async def scenario():
        versions = Versions(AWSCURRENT=secret("db-password", local="local-password"))
        _, local = provider(versions, DBKEEPER_CLIENT_PASSWORD_SECRET="db#local")
        scramble = b"t" * 20
        assert await local.verify("app", scramble, native_proof("local-password", scramble))
        assert not await local.verify("app", scramble, native_proof("db-password", scramble))
    run(scenario())


def test_without_aws_settings_nothing_of_aws_is_imported():
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys; sys.path.insert(0, sys.argv[1])\n"
             "from dbkeeper.config import Config; from dbkeeper.credentials import make\n"
             "from dbkeeper.log import Logger\n"
             "make(Config.from_environ({'DB_HOST': 'h', 'DB_USER': 'u'}), Logger())\n"
             "import dbkeeper.server\n"
             "loaded = sorted(m for m in sys.modules if m.startswith(('botocore', 'boto3', 'dbkeeper.aws.credentials', "
             "'dbkeeper.aws.budget', 'dbkeeper.aws.sdk')))\n"
             "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(Path(__file__).resolve().parents[2] / "extension")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
