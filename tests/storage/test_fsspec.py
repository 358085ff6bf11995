"""What only the fsspec backend does: multipart uploads' md5 in metadata, retries of a server that
cannot be reached, URLs, the install hint without the extra, and no secret in repr."""

from __future__ import annotations

import hashlib
import sys

import pytest

from shardrun.errors import StoreError, TransientError
from shardrun.storage import registry
from shardrun.storage.account import Account
from shardrun.storage.fsspec_store.backend import FSSPEC_BACKEND, GS_BACKEND, S3_BACKEND, Target
from shardrun.storage.fsspec_store.store import FsspecStore
from shardrun.storage.retry import RetryPolicy
from tests.s3_fixtures import free_port


def test_a_multipart_upload_keeps_its_md5_in_the_objects_metadata(make_s3_store, tmp_path):
    store = make_s3_store()
    store.single_request_bytes = 5 * 1024 * 1024  # S3's smallest part: a 6 MiB object takes two
    data = bytes(range(256)) * (6 * 4096)
    source = tmp_path / "big"
    source.write_bytes(data)
    stat = store.put_file("j/shards/s.tar", source)
    etag = store.fs.info(f"{store.root}/j/shards/s.tar")["ETag"].strip('"')
    assert etag.endswith("-2")  # multipart: the ETag is no MD5
    assert store.stat("j/shards/s.tar").md5 == stat.md5 == hashlib.md5(data).hexdigest()
    store.download("j/shards/s.tar", tmp_path / "copy", expected_md5=stat.md5)
    assert (tmp_path / "copy").read_bytes() == data


def test_a_server_that_cannot_be_reached_is_retried_then_transient(s3_env):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{free_port()}", skip_instance_cache=True,
                           config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1})
    store = FsspecStore(fs, Target("s3", "bucket/p"), "s3://bucket/p",
                        retry=RetryPolicy(attempts=2, first_wait_seconds=0.01, max_wait_seconds=0.01))
    with pytest.raises(TransientError, match=r"s3://bucket/p: looking up bucket 'bucket' kept failing .*try again"):
        store.list()


def test_urls_name_protocol_and_root():
    assert S3_BACKEND.target("s3://b/team/x/") == Target("s3", "b/team/x")
    assert GS_BACKEND.target("gs://b/p") == Target("gcs", "b/p")
    assert FSSPEC_BACKEND.target("fsspec://memory/team") == Target("memory", "team")
    assert FSSPEC_BACKEND.target("fsspec://file/srv/store") == Target("file", "/srv/store")
    with pytest.raises(StoreError, match="expected fsspec://PROTOCOL/PATH"):
        FSSPEC_BACKEND.target("fsspec://memory")
    assert registry.backend_for("s3://b/p") is S3_BACKEND


def test_without_the_extra_the_error_says_which_to_install(monkeypatch):
    import importlib

    fsspec_registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    monkeypatch.delitem(fsspec_registry._registry, "s3", raising=False)  # fsspec's cache of the loaded class
    with pytest.raises(StoreError) as raised:
        registry.open_store(Account("a", "s3://b/p"))
    assert str(raised.value).endswith("install the S3 extra: pip install 'shardrun[s3]'")
    assert "\n" not in str(raised.value)


def test_storage_options_never_show_in_repr_or_messages():
    settings = FSSPEC_BACKEND.settings({"storage_options": {"secret": "s3cr3t-value"}}, {}, None)
    assert "s3cr3t-value" not in repr(settings)
    store = FSSPEC_BACKEND.open(Account("a", "fsspec://memory/repr-test"))
    assert "s3cr3t" not in repr(store)
