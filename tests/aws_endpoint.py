"""A real AWS-shaped endpoint for the tests: moto in server mode (its own process, HTTP on a free
loopback port). boto3 in the tests and botocore in the extension reach it through
AWS_ENDPOINT_URL; requests are real SigV4-signed HTTP, answers are moto's emulation of Secrets
Manager, DynamoDB and STS (moto does not check signatures or IAM policies).

    with MotoServer() as aws:
        aws.client("secretsmanager").create_secret(...)
        env = aws.extension_env()   # endpoint, region, STS session credentials, SDK path
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time

import boto3

from tests.mariadb import free_port

REGION = "us-east-1"


class MotoServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on port {self.port}") from exc
                time.sleep(0.05)
        self._credentials = None

    def client(self, service: str, **credentials):
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=credentials.get("AccessKeyId", "testing"),
                            aws_secret_access_key=credentials.get("SecretAccessKey", "testing"),
                            aws_session_token=credentials.get("SessionToken"))

    def role_credentials(self) -> dict:
        """Session credentials from STS AssumeRole, as Lambda gives a function its role's."""
        if self._credentials is None:
            reply = self.client("sts").assume_role(RoleArn="arn:aws:iam::123456789012:role/fn-role",
                                                   RoleSessionName="dbkeeper-test")
            self._credentials = reply["Credentials"]
        return self._credentials

    def extension_env(self) -> dict[str, str]:
        """What Lambda would put in the environment (plus the endpoint and where botocore is)."""
        creds = self.role_credentials()
        return {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": creds["SessionToken"],
                "DBKEEPER_AWS_SDK_PATH": sysconfig.get_paths()["purelib"]}

    def create_budget_table(self, name: str) -> None:
        dynamodb = self.client("dynamodb")
        dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                         {"AttributeName": "sk", "KeyType": "RANGE"}],
                              AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                    {"AttributeName": "sk", "AttributeType": "S"}])
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})

    def leases(self, table: str) -> list[dict]:
        items = self.client("dynamodb").scan(TableName=table, ConsistentRead=True)["Items"]
        return [item for item in items if item["sk"]["S"].startswith("slot#")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
