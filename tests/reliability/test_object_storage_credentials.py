"""Credentials that do not allow reading an s3:// source, against a local S3 server that checks
them (moto's server with authentication on after the corpus and a user that may only list the
bucket are made): one line that points at the credentials, at once, not a PermissionError
retried as if the network had dropped, nor "file not found" for a file that is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from tests.reliability.support import subprocess_env
from tests.support.s3_server import S3StandIn

pytestmark = pytest.mark.slow


def _require_auth(s3: S3StandIn, requests_without: str) -> None:
    """moto checks credentials once it has served this many more requests ("inf": never)."""
    url = os.environ["AWS_ENDPOINT_URL"] + "/moto-api/reset-auth"
    headers = {"Content-Type": "text/plain"}  # a form body would be parsed away by the server
    urllib.request.urlopen(urllib.request.Request(url, requests_without.encode(), headers))


def _list_only_user() -> dict[str, str]:
    import boto3

    iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    iam.create_user(UserName="lister")
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName="lister", PolicyName="list", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="lister")["AccessKey"]
    return {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def test_credentials_that_cannot_read_fail_at_once_naming_them(tmp_path):
    body = "".join(json.dumps({"text": f"document {i} of the bucket"}) + "\n" for i in range(50))
    results = []
    with S3StandIn() as s3:
        url = s3.put("corpus/part-0.jsonl", body.encode())
        env = subprocess_env(**_list_only_user(), LMSTREAM_SOURCE_MAX_RETRIES="3",
                             LMSTREAM_SOURCE_RETRY_DELAY="1")  # fmt: skip
        _require_auth(s3, "0")
        try:
            for k, dataset in enumerate((f"s3://{s3.bucket}/corpus/*.jsonl", url)):
                start = time.monotonic()
                done = subprocess.run(
                    [sys.executable, "-m", "lmstream", "orchestrate", "--stream", "--no-progress",
                     "--dataset", dataset, "--vocab-size", "300", "--experiment", f"c{k}",
                     "--workspace", str(tmp_path / "ws")],
                    env=env, capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                results.append((done, time.monotonic() - start))
        finally:
            _require_auth(s3, "inf")
    for done, seconds in results:  # a glob (listed, then read) and the file itself
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 3 and len(lines) == 1, done.stderr
        assert url in lines[0] and "credentials" in lines[0], lines[0]
        assert "retries" not in lines[0] and "not found" not in lines[0], lines[0]
        assert seconds < 30, seconds  # the 3 retries' backoff (1 + 2 + 4 s) was not waited out
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws").rglob("*.json"))
