"""Specification of ./template.yaml (AWS SAM: the dbkeeper layers + the sample function).

cfn-lint must find nothing; the layer/function wiring is checked on the template itself and,
when aws-sam-translator is installed, on the CloudFormation that `sam deploy` would produce.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
LAYER_RUNTIMES = {"python3.11", "python3.12", "python3.13"}


def cfn_lint_exe() -> str:
    local = Path(sys.executable).parent / "cfn-lint"
    if local.exists():
        return str(local)
    found = shutil.which("cfn-lint")
    if not found:
        pytest.fail("cfn-lint not installed: ./.venv/bin/pip install -r requirements-dev.txt", pytrace=False)
    return found


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import decode  # cfn-lint's loader understands !Ref, !If, ...

    tpl, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return json.loads(json.dumps(tpl))  # plain dicts


def resources_of_type(tpl: dict, type_: str) -> dict[str, dict]:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == type_}


def resolve_if(value, conditions: dict[str, bool]):
    """Resolve Fn::If for the given condition values (recursively)."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        cond, yes, no = value["Fn::If"]
        return resolve_if(yes if conditions[cond] else no, conditions)
    if isinstance(value, list):
        return [resolve_if(v, conditions) for v in value]
    return value


def handlers_in_app() -> dict[str, ast.FunctionDef]:
    tree = ast.parse((REPO / "sample_function" / "app.py").read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


# --------------------------------------------------------------------------- lint


def test_cfn_lint_finds_nothing():
    proc = subprocess.run([cfn_lint_exe(), "--format", "json", str(TEMPLATE)], capture_output=True, text=True)
    assert proc.stdout.strip(), proc.stderr
    matches = json.loads(proc.stdout)
    errors = [m for m in matches if m["Level"] == "Error"]
    warnings = [m for m in matches if m["Level"] == "Warning"]
    assert not errors, json.dumps(errors, indent=1)
    assert not warnings, json.dumps(warnings, indent=1)


def test_cfn_lint_would_catch_a_broken_template(tmp_path):
    # the lint step is not a no-op: a misspelt property is an error
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("      Handler: !Ref Handler", "      Handlr: !Ref Handler"))
    proc = subprocess.run([cfn_lint_exe(), "--format", "json", str(broken)], capture_output=True, text=True)
    assert any(m["Level"] == "Error" for m in json.loads(proc.stdout))


# --------------------------------------------------------------------------- layers


def test_one_layer_per_architecture_from_the_built_zips(template, built_layer):
    layers = resources_of_type(template, "AWS::Serverless::LayerVersion")
    by_arch = {}
    for name, res in layers.items():
        props = res["Properties"]
        (arch,) = props["CompatibleArchitectures"]
        by_arch[arch] = (name, props)
        assert set(props["CompatibleRuntimes"]) == LAYER_RUNTIMES
    assert set(by_arch) == {"x86_64", "arm64"}
    assert by_arch["x86_64"][1]["ContentUri"] == "dist/dbkeeper-layer-x86_64.zip"
    assert by_arch["arm64"][1]["ContentUri"] == "dist/dbkeeper-layer-arm64.zip"
    assert (REPO / by_arch["x86_64"][1]["ContentUri"]) == built_layer.zip_x86_64
    assert (REPO / by_arch["arm64"][1]["ContentUri"]) == built_layer.zip_arm64
    for _, props in by_arch.values():
        assert (REPO / props["ContentUri"]).is_file()


def test_layer_names_differ(template):
    layers = resources_of_type(template, "AWS::Serverless::LayerVersion").values()
    names = [r["Properties"]["LayerName"] for r in layers]
    assert len(set(names)) == len(names) == 2


# --------------------------------------------------------------------------- function


@pytest.fixture(scope="module")
def function(template) -> dict:
    (fn,) = resources_of_type(template, "AWS::Serverless::Function").values()
    return fn["Properties"]


def test_function_runtime_is_one_the_layers_support(template, function):
    assert function["Runtime"] == "python3.12"
    for layer in resources_of_type(template, "AWS::Serverless::LayerVersion").values():
        assert function["Runtime"] in layer["Properties"]["CompatibleRuntimes"]


def test_function_code_is_the_sample_function(function):
    code = REPO / function["CodeUri"]
    assert (code / "app.py").is_file() and (code / "requirements.txt").is_file()


def test_every_selectable_handler_exists(template, function):
    assert function["Handler"] == {"Ref": "Handler"}
    param = template["Parameters"]["Handler"]
    handlers = handlers_in_app()
    assert param["Default"] in param["AllowedValues"]
    for value in param["AllowedValues"]:
        module, _, func = value.rpartition(".")
        assert module == "app" and func in handlers, value


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_the_layer_attached_matches_the_function_architecture(template, function, arch):
    param = template["Parameters"]["Architecture"]
    assert set(param["AllowedValues"]) == {"x86_64", "arm64"} and param["Default"] == "x86_64"
    assert function["Architectures"] == [{"Ref": "Architecture"}]
    # evaluate the template's conditions for this parameter value
    conditions = {}
    for name, expr in template["Conditions"].items():
        if "Fn::Equals" in expr and {"Ref": "Architecture"} in expr["Fn::Equals"]:
            other = [x for x in expr["Fn::Equals"] if x != {"Ref": "Architecture"}][0]
            conditions[name] = other == arch
        else:
            conditions[name] = False
    (layer_ref,) = resolve_if(function["Layers"], conditions)
    layer = template["Resources"][layer_ref["Ref"]]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["CompatibleArchitectures"] == [arch]


def test_environment_points_at_parameters_and_sets_the_wrapper(template, function, built_layer):
    env = function["Environment"]["Variables"]
    expected = {"DB_HOST": "DbHost", "DB_PORT": "DbPort", "DB_USER": "DbUser",
                "DB_PASSWORD": "DbPassword", "DB_NAME": "DbName"}
    for var, param in expected.items():
        assert env[var] == {"Ref": param}, var
        assert param in template["Parameters"]
    assert template["Parameters"]["DbPassword"].get("NoEcho") is True
    assert template["Parameters"]["DbPassword"]["Type"] == "String"
    for param in ("DbHost", "DbUser", "DbName", "DbPort"):
        assert not template["Parameters"][param].get("NoEcho")
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/dbkeeper-wrapper"
    # the wrapper is in the layer at that path (zip root = /opt), executable
    with zipfile.ZipFile(built_layer.zip_x86_64) as z:
        info = z.getinfo(env["AWS_LAMBDA_EXEC_WRAPPER"].removeprefix("/opt/"))
    assert (info.external_attr >> 16) & 0o111 == 0o111


def test_vpc_config_is_optional(template, function):
    for p in ("SubnetIds", "SecurityGroupIds"):
        assert template["Parameters"][p]["Type"] == "CommaDelimitedList"
        assert template["Parameters"][p]["Default"] == ""
    cond, with_vpc, without = function["VpcConfig"]["Fn::If"]
    assert with_vpc == {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": {"Ref": "SecurityGroupIds"}}
    assert without == {"Ref": "AWS::NoValue"}
    assert cond in template["Conditions"]


def test_sam_transform_produces_a_function_with_the_layer(template, monkeypatch):
    sam = pytest.importorskip("samtranslator.translator.transform",
                              reason="aws-sam-translator not installed (pip install aws-sam-translator)")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    tpl = json.loads(json.dumps(template))
    for res in tpl["Resources"].values():  # sam package would upload these to S3
        if res["Type"] == "AWS::Serverless::LayerVersion":
            res["Properties"]["ContentUri"] = "s3://bucket/" + res["Properties"]["ContentUri"]
        if res["Type"] == "AWS::Serverless::Function":
            res["Properties"]["CodeUri"] = "s3://bucket/code.zip"

    class NoManagedPolicies:
        def load(self):
            return {}

    out = sam.transform(tpl, {"DbHost": "db.example", "DbUser": "app", "DbName": "appdb"}, NoManagedPolicies())
    functions = resources_of_type(out, "AWS::Lambda::Function")
    layer_versions = resources_of_type(out, "AWS::Lambda::LayerVersion")
    assert len(functions) == 1 and len(layer_versions) == 2
    (fn,) = functions.values()
    for arm64 in (False, True):
        (ref,) = resolve_if(fn["Properties"]["Layers"], {"IsArm64": arm64, "HasVpc": False})
        layer = layer_versions[ref["Ref"]]["Properties"]
        assert layer["CompatibleArchitectures"] == (["arm64"] if arm64 else ["x86_64"])
    assert fn["Properties"]["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/dbkeeper-wrapper"
