"""What only LocalStore does (the shared contract runs in test_contract.py)."""

from __future__ import annotations

import hashlib
import time

import pytest

from shardrun.errors import InvalidKey
from shardrun.storage.local import LocalStore


def test_local_store_rehashes_a_file_changed_behind_its_back(tmp_path):
    store = LocalStore(tmp_path / "acct")
    store.put_bytes("f", b"original")
    time.sleep(0.01)
    (tmp_path / "acct" / "f").write_bytes(b"tampered!")
    assert store.stat("f").md5 == hashlib.md5(b"tampered!").hexdigest()


def test_local_store_refuses_reserved_keys_and_hides_its_folders(tmp_path):
    store = LocalStore(tmp_path / "acct")
    store.put_bytes("visible", b"1")
    with pytest.raises(InvalidKey, match="reserved"):
        store.put_bytes(".shardrun-tmp/x", b"1")
    assert [s.key for s in store.list()] == ["visible"]
    assert store.usage().used_bytes == 1
