"""A local S3-compatible server for object-storage source tests: moto's server mode on
127.0.0.1, with the environment s3fs and boto3 read credentials and the endpoint from.

    with S3StandIn() as s3:                      # sets AWS_* for this process (and its children)
        s3.put("corpus/part-0.jsonl", data)      # into s3.bucket
        ... read s3://{s3.bucket}/corpus/*.jsonl ...

Nothing leaves the machine; the environment is restored on exit.
"""

from __future__ import annotations

import os
import socket

BUCKET = "lmstream-test"


class S3StandIn:
    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self._server = None
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> S3StandIn:
        from moto.server import ThreadedMotoServer

        with socket.socket() as probe:  # a free port (moto takes a fixed one)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
        for key in (*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            self._saved[key] = os.environ.pop(key, None)
        os.environ.update(env)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._server is not None:
            self._server.stop()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    def put(self, key: str, body: bytes) -> str:
        """Upload ``body`` as ``key``; returns its s3:// URL."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"
