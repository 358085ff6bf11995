"""Pytest plugin: a real S3 server (moto's standalone server, on loopback) and buckets on it.

`s3_server` starts moto's ThreadedMotoServer on 127.0.0.1 at a free port once per test session
(each worker of pytest-xdist starts its own). `s3_env` points AWS's usual environment at made-up
credentials for it, so nothing reaches real AWS; `make_bucket` creates a fresh bucket per call.
"""

from __future__ import annotations

import itertools
import socket
import uuid

import pytest

from shardrun.storage.fsspec_store.backend import FSSPEC_BACKEND, S3_BACKEND
from shardrun.storage.account import Account

TEST_KEY_ID = "shardrun-test-key"
TEST_SECRET = "shardrun-test-secret-never-printed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Returns the endpoint URL of a running moto S3 server (stopped at the end of the session)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Returns the endpoint URL, with AWS's environment holding test credentials and no real config."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance role (real AWS)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@pytest.fixture
def make_bucket(s3_env):
    """Returns a factory: make_bucket() creates a new empty bucket on the server and returns its name."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    counter = itertools.count()

    def make() -> str:
        name = f"shardrun-{uuid.uuid4().hex[:8]}-{next(counter)}"
        client.create_bucket(Bucket=name)
        return name

    return make


@pytest.fixture
def make_s3_store(make_bucket, s3_env):
    """Returns a factory of fresh S3 stores, each on a new bucket under a prefix, opened the way a
    job opens them: make_s3_store(quota_bytes=None)."""

    def make(quota_bytes=None, prefix="team/data"):
        url = f"s3://{make_bucket()}/{prefix}"
        settings = S3_BACKEND.settings({"endpoint_url": s3_env}, {"fsspec_retries": 2}, None)
        return S3_BACKEND.open(Account("acct", url, quota_bytes, settings=settings))

    return make


@pytest.fixture
def make_fsspec_store(tmp_path):
    """Returns a factory of fresh stores on fsspec's own filesystems: make_fsspec_store(protocol, quota_bytes)."""
    counter = itertools.count()

    def make(protocol="memory", quota_bytes=None):
        n = next(counter)
        path = f"shardrun-test-{uuid.uuid4().hex[:8]}/s{n}" if protocol == "memory" else f"{tmp_path}/fsspec{n}"
        return FSSPEC_BACKEND.open(Account("acct", f"fsspec://{protocol}/{path.lstrip('/')}", quota_bytes))

    return make
