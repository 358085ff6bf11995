"""Opening a store by its URL: each scheme to its backend, and bad URLs refused."""

from __future__ import annotations

import pytest

from shardrun.storage.local import LocalStore
from shardrun.storage.registry import open_store


def test_open_store_by_url(tmp_path):
    store = open_store(f"local://{tmp_path}/acct", quota_bytes=123)
    assert isinstance(store, LocalStore) and store.quota_bytes == 123
    relative = open_store("local://rel/acct", base_dir=tmp_path)
    assert relative.root == tmp_path / "rel" / "acct"
    assert open_store("memory://same") is open_store("memory://same")


@pytest.mark.parametrize(
    "url, message",
    [("s3://bucket", "unknown scheme 's3'"), ("no-scheme", "has no scheme"), ("local://", "names no location")],
)
def test_open_store_rejects_bad_urls(url, message):
    from shardrun.errors import StoreError

    with pytest.raises(StoreError, match=message):
        open_store(url)
