"""Config: every setting read once, fallbacks to the function's DB_* names, all problems at once."""

import pytest

from dbkeeper.config import SETTINGS, Config, fail_mode_of
from dbkeeper.errors import ConfigError

MINIMAL = {"DB_HOST": "db.example", "DB_USER": "app"}


def test_given_only_the_functions_db_settings_then_every_other_setting_has_its_default():
    config = Config.from_environ(MINIMAL)
    assert (config.db_host, config.db_port, config.db_user, config.db_password, config.db_name) == (
        "db.example", 3306, "app", "", None)
    assert config.listen_port == 3306
    assert config.socket_path == "/tmp/dbkeeper.sock"
    assert config.db_tls == "preferred"
    assert config.pool_size == 4
    assert config.borrow_timeout == 5.0
    assert config.connect_timeout == 2.0
    assert config.client_handshake_timeout == 10.0
    assert config.client_flags == ("MULTI_RESULTS",)
    assert config.init_connect_budget == 8.0
    assert config.log_level == "info"
    assert config.event_loop == "auto"
    assert config.enabled is True
    assert config.trust_unix_socket is False
    assert config.hold_setup is True
    assert config.local_password == ""


def test_dbkeeper_names_win_over_the_functions_conventional_names():
    env = {**MINIMAL, "DB_PORT": "3307", "DBKEEPER_DB_HOST": "proxy-target", "DBKEEPER_DB_PORT": "3308",
           "DB_PASSWORD": "fn-secret", "DBKEEPER_DB_PASSWORD": "ext-secret", "DB_NAME": "fn", "DBKEEPER_DB_NAME": "ext"}
    config = Config.from_environ(env)
    assert (config.db_host, config.db_port, config.db_password, config.db_name) == (
        "proxy-target", 3308, "ext-secret", "ext")


def test_every_setting_is_parsed():
    env = {
        "DBKEEPER_DB_HOST": "h", "DBKEEPER_DB_USER": "u", "DBKEEPER_DB_PASSWORD": "p", "DBKEEPER_DB_NAME": "d",
        "DBKEEPER_DB_PORT": "1234", "DBKEEPER_DB_TLS": "REQUIRED", "DBKEEPER_DB_TLS_CA": "/opt/ca.pem",
        "DBKEEPER_LISTEN_PORT": "0", "DBKEEPER_SOCKET": "/tmp/x.sock", "DBKEEPER_CLIENT_PASSWORD": "local",
        "DBKEEPER_TRUST_UNIX_SOCKET": "yes", "DBKEEPER_POOL_SIZE": "2", "DBKEEPER_BORROW_TIMEOUT_MS": "250",
        "DBKEEPER_CONNECT_TIMEOUT_MS": "300", "DBKEEPER_INIT_CONNECT_BUDGET_MS": "0", "DBKEEPER_LOG_LEVEL": "Debug",
        "DBKEEPER_CLIENT_HANDSHAKE_TIMEOUT_MS": "1500", "DBKEEPER_CLIENT_FLAGS": "found_rows, MULTI_RESULTS",
        "DBKEEPER_EVENT_LOOP": "asyncio", "DBKEEPER_ENABLED": "1", "DBKEEPER_HOLD_SETUP": "off",
        "DBKEEPER_DB_SECRET": "arn:aws:secretsmanager:eu-west-1:1:secret:db",
        "DBKEEPER_CLIENT_PASSWORD_SECRET": "local#pw",
        "DBKEEPER_DB_IAM_AUTH": "true", "DBKEEPER_AWS_SDK_PATH": "/sdk", "DBKEEPER_BUDGET_TABLE": "budget",
        "DBKEEPER_BUDGET_MAX": "80%", "DBKEEPER_BUDGET_NAME": "fleet", "DBKEEPER_BUDGET_LEASE_S": "60",
        "DBKEEPER_METRICS": "off", "DBKEEPER_METRICS_NAMESPACE": "ns",
        "DBKEEPER_METRICS_DIMENSIONS": "service=a, stage=b",
        "DBKEEPER_METRICS_EVERY": "7", "DBKEEPER_METRICS_INTERVAL_S": "9",
        "DBKEEPER_FAIL_MODE": "Closed", "DBKEEPER_MAX_PENDING_CLIENTS": "7", "DBKEEPER_VERIFY_AFTER_IDLE_MS": "2500",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start", "DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S": "30",
        "DBKEEPER_IDLE_TIMEOUT_S": "0", "DBKEEPER_SESSION_MOVES": "false",
    }
    config = Config.from_environ(env)
    assert config.session_moves is False
    aws = config.aws
    assert (aws.db_secret, aws.client_password_secret, aws.iam_auth, aws.sdk_path) == (
        "arn:aws:secretsmanager:eu-west-1:1:secret:db", "local#pw", True, "/sdk")
    assert (aws.budget_table, aws.budget_max, aws.budget_percent, aws.budget_name, aws.budget_lease) == (
        "budget", None, 80.0, "fleet", 60)
    assert (aws.metrics, aws.metrics_namespace, aws.metrics_dimensions, aws.metrics_every, aws.metrics_interval) == (
        False, "ns", (("service", "a"), ("stage", "b")), 7, 9)
    assert config.db_tls == "required" and config.db_tls_ca == "/opt/ca.pem"
    assert config.listen_port == 0 and config.socket_path == "/tmp/x.sock"
    assert config.local_password == "local" and config.trust_unix_socket is True
    assert (config.pool_size, config.borrow_timeout, config.connect_timeout, config.init_connect_budget) == (
        2, 0.25, 0.3, 0.0)
    assert config.log_level == "debug" and config.event_loop == "asyncio"
    assert config.client_handshake_timeout == 1.5
    assert config.client_flags == ("FOUND_ROWS", "MULTI_RESULTS")
    assert config.hold_setup is False
    assert config.fail_mode == "closed" and config.max_pending_clients == 7 and config.verify_after_idle == 2.5
    assert config.snap_start is True
    assert config.upstream_wait_timeout == 30 and config.idle_timeout == 0
    assert {s.name for s in SETTINGS} <= set(env) | {"DBKEEPER_DB_PORT"}


@pytest.mark.parametrize("name, value", [
    ("DBKEEPER_DB_PORT", "0"), ("DBKEEPER_DB_PORT", "65536"), ("DBKEEPER_DB_PORT", "x"),
    ("DBKEEPER_DB_TLS", "verify-ish"), ("DBKEEPER_LISTEN_PORT", "-1"), ("DBKEEPER_SOCKET", "relative.sock"),
    ("DBKEEPER_SOCKET", "/" + "s" * 120), ("DBKEEPER_SOCKET", "/tmp/a\nport=1.sock"), ("DBKEEPER_SOCKET", "/tmp/a\tb"),
    ("DBKEEPER_TRUST_UNIX_SOCKET", "maybe"), ("DBKEEPER_POOL_SIZE", "0"),
    ("DBKEEPER_POOL_SIZE", "65"), ("DBKEEPER_BORROW_TIMEOUT_MS", "0"), ("DBKEEPER_CONNECT_TIMEOUT_MS", "5"),
    ("DBKEEPER_INIT_CONNECT_BUDGET_MS", "9001"), ("DBKEEPER_LOG_LEVEL", "loud"), ("DBKEEPER_EVENT_LOOP", "trio"),
    ("DBKEEPER_ENABLED", "perhaps"), ("DBKEEPER_CLIENT_FLAGS", "MULTI_RESULTS,COMPRESS"),
    ("DBKEEPER_FAIL_MODE", "ajar"), ("DBKEEPER_MAX_PENDING_CLIENTS", "0"), ("DBKEEPER_VERIFY_AFTER_IDLE_MS", "-1"),
])
def test_a_bad_value_fails_with_a_message_naming_the_setting(name, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_environ({**MINIMAL, name: value})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(name)


def test_missing_host_and_user_are_reported_together_with_other_problems():
    with pytest.raises(ConfigError) as caught:
        Config.from_environ({"DBKEEPER_POOL_SIZE": "many"})
    text = str(caught.value)
    assert "DBKEEPER_DB_HOST (or DB_HOST) is required" in text
    assert "DBKEEPER_DB_USER (or DB_USER) is required" in text
    assert "DBKEEPER_POOL_SIZE" in text
    assert len(caught.value.problems) == 3


def test_no_listener_at_all_is_an_error():
    with pytest.raises(ConfigError, match="leave no listener"):
        Config.from_environ({**MINIMAL, "DBKEEPER_LISTEN_PORT": "0", "DBKEEPER_SOCKET": ""})


def test_disabled_needs_no_database_settings():
    config = Config.from_environ({"DBKEEPER_ENABLED": "false"})
    assert config.enabled is False


def test_passwords_never_appear_in_repr_or_errors():
    config = Config.from_environ({**MINIMAL, "DB_PASSWORD": "hunter2", "DBKEEPER_CLIENT_PASSWORD": "swordfish"})
    assert "hunter2" not in repr(config) and "swordfish" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        Config.from_environ({**MINIMAL, "DB_PASSWORD": "hunter2", "DB_PORT": "nope"})
    assert "hunter2" not in str(caught.value)


def test_config_is_frozen():
    config = Config.from_environ(MINIMAL)
    with pytest.raises(AttributeError):
        config.db_host = "elsewhere"


def test_the_readme_documents_every_setting_with_its_default():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `DBKEEPER_")}
    for setting in SETTINGS:
        row = next((line for name, line in rows.items() if name.startswith(f"`{setting.name}`")), None)
        assert row is not None, f"{setting.name} is missing from README's configuration table"
        if setting.fallback:
            assert f"`{setting.fallback}`" in row, setting.name
        assert setting.meaning


def test_aws_features_are_off_by_default_and_metrics_on_with_the_function_as_service():
    config = Config.from_environ({**MINIMAL, "AWS_LAMBDA_FUNCTION_NAME": "orders", "AWS_LAMBDA_FUNCTION_VERSION": "7"})
    assert not config.aws.needs_sdk
    assert config.aws.metrics and config.aws.metrics_dimensions == (("service", "orders"),)
    assert (config.aws.function_name, config.aws.function_version, config.snap_start) == ("orders", "7", False)


def test_a_secret_makes_host_and_user_optional():
    config = Config.from_environ({"DBKEEPER_DB_SECRET": "db-credentials"})
    assert config.aws.db_secret == "db-credentials" and config.aws.needs_sdk


@pytest.mark.parametrize("env, problem", [
    ({"DBKEEPER_BUDGET_TABLE": "t"}, "DBKEEPER_BUDGET_MAX is not"),
    ({"DBKEEPER_BUDGET_MAX": "120%"}, "DBKEEPER_BUDGET_MAX"),
    ({"DBKEEPER_BUDGET_MAX": "lots"}, "DBKEEPER_BUDGET_MAX"),
    ({"DBKEEPER_DB_IAM_AUTH": "true", "DBKEEPER_CLIENT_PASSWORD": "x"}, "DBKEEPER_DB_TLS=required"),
    ({"DBKEEPER_DB_IAM_AUTH": "true", "DBKEEPER_DB_TLS": "required"}, "DBKEEPER_CLIENT_PASSWORD"),
    ({"DBKEEPER_METRICS_DIMENSIONS": "service"}, "DBKEEPER_METRICS_DIMENSIONS"),
])
def test_an_inconsistent_aws_setting_is_named(env, problem):
    with pytest.raises(ConfigError) as raised:
        Config.from_environ({**MINIMAL, **env})
    assert problem in str(raised.value)
def test_snap_start_is_off_unless_lambda_says_the_environment_is_restored_from_a_snapshot():
    assert Config.from_environ(MINIMAL).snap_start is False
    assert Config.from_environ({**MINIMAL, "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}).snap_start is False


@pytest.mark.parametrize("value, mode", [(None, "open"), ("closed", "closed"), (" CLOSED ", "closed"),
                                         ("open", "open"), ("ajar", "open")])
def test_the_fail_mode_is_read_alone_when_the_rest_of_the_config_is_broken(value, mode):
    env = {"DBKEEPER_POOL_SIZE": "lots"} | ({"DBKEEPER_FAIL_MODE": value} if value is not None else {})
    assert fail_mode_of(env) == mode


def test_on_managed_instances_the_pool_bound_follows_the_environments_concurrency():
    base = {"DBKEEPER_DB_HOST": "db", "DBKEEPER_DB_USER": "app"}
    assert Config.from_environ(base).pool_size == 4  # one invocation at a time: the default
    assert Config.from_environ({**base, "AWS_LAMBDA_MAX_CONCURRENCY": "64"}).pool_size == 16
    assert Config.from_environ({**base, "AWS_LAMBDA_MAX_CONCURRENCY": "2"}).pool_size == 1
    assert Config.from_environ({**base, "AWS_LAMBDA_MAX_CONCURRENCY": "1000"}).pool_size == 64
    # the setting, when given, wins
    assert Config.from_environ({**base, "AWS_LAMBDA_MAX_CONCURRENCY": "64", "DBKEEPER_POOL_SIZE": "3"}).pool_size == 3
