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


# -- one writing machine per folder (a local store's times come from the writer's clock) ------


def test_a_second_machine_may_read_but_not_write_a_local_folder(tmp_path):
    from shardrun.errors import StoreError

    first = LocalStore(tmp_path / "shared", host="lab-pc/1234")
    first.put_bytes("job/journal/e1.json", b"{}")
    other = LocalStore(tmp_path / "shared", host="laptop/9999")
    assert other.get_bytes("job/journal/e1.json") == b"{}" and other.list_keys() == ["job/journal/e1.json"]
    with pytest.raises(StoreError, match=r"clock of machine 'lab-pc/1234'.*laptop/9999.*delete .*\.shardrun-host"):
        other.put_bytes("job/journal/e2.json", b"{}")
    again = LocalStore(tmp_path / "shared", host="lab-pc/1234")  # the same machine: any number of workers
    again.put_bytes("job/journal/e3.json", b"{}")
    (tmp_path / "shared" / ".shardrun-host").unlink()  # the job moved to the laptop for good
    other.put_bytes("job/journal/e2.json", b"{}")
    assert sorted(LocalStore(tmp_path / "shared").list_keys()) == [f"job/journal/e{i}.json" for i in (1, 2, 3)]
