"""The store contract (DESIGN §4), run against every backend through the `make_store` fixture; what
only one backend does is tested in test_local.py, test_memory.py and drive/test_store.py."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from shardrun.errors import IntegrityError, InvalidKey, NotFound, QuotaExceeded, TransientError
from shardrun.storage.local import LocalStore
from shardrun.storage.memory import MemoryStore


@pytest.fixture(params=["local", "memory", "drive", "s3", "fsspec-memory", "fsspec-file"])
def make_store(request, tmp_path):
    """Returns a factory of fresh stores of one backend: make_store(quota_bytes=None).

    drive: a DriveStore on the Drive emulator, each store a new account whose Drive quota is
    `quota_bytes` (so Drive itself refuses the write, as a full Drive does).
    s3: an FsspecStore on moto's S3 server (a new bucket each); fsspec-memory and fsspec-file:
    FsspecStores on fsspec's memory and local filesystems (the generic write-then-move path).
    """
    counter = iter(range(1000))

    def make(quota_bytes=None):
        n = next(counter)
        if request.param == "local":
            return LocalStore(tmp_path / f"store{n}", quota_bytes)
        if request.param == "drive":
            return request.getfixturevalue("make_drive_store")(quota_bytes)
        if request.param == "s3":
            return request.getfixturevalue("make_s3_store")(quota_bytes)
        if request.param.startswith("fsspec-"):
            return request.getfixturevalue("make_fsspec_store")(request.param[len("fsspec-"):], quota_bytes)
        return MemoryStore(quota_bytes, url=f"memory://contract-{n}")

    return make


@pytest.fixture
def store(make_store):
    return make_store()


def test_put_then_get_returns_same_bytes_and_hashes(store):
    data = b"shard bytes \x00\xff" * 1000
    stat = store.put_bytes("a/b/c.bin", data)
    assert stat.key == "a/b/c.bin"
    assert stat.size == len(data)
    assert stat.md5 == hashlib.md5(data).hexdigest()
    assert stat.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("a/b/c.bin") == data
    assert store.stat("a/b/c.bin").md5 == stat.md5


def test_put_file_and_download_round_trip(store, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    stat = store.put_file("x/in.bin", source)
    dest = tmp_path / "out" / "copy.bin"
    got = store.download("x/in.bin", dest, expected_md5=stat.md5)
    assert dest.read_bytes() == source.read_bytes()
    assert got.size == source.stat().st_size
    assert not dest.with_name("copy.bin.part").exists()


def test_download_resumes_a_partial_file(store, tmp_path):
    data = bytes(range(256)) * 4000
    stat = store.put_bytes("big", data)
    dest = tmp_path / "big"
    dest.with_name("big.part").write_bytes(data[:300_000])  # an earlier, interrupted download
    store.download("big", dest, expected_md5=stat.md5)
    assert dest.read_bytes() == data


def test_download_with_wrong_hash_raises_and_leaves_no_file(store, tmp_path):
    store.put_bytes("k", b"real content")
    dest = tmp_path / "k"
    with pytest.raises(IntegrityError, match="expected 0+"):
        store.download("k", dest, expected_md5="0" * 32)
    assert not dest.exists()
    assert not dest.with_name("k.part").exists()


def test_get_bytes_verifies_expected_hash(store):
    store.put_bytes("k", b"abc")
    assert store.get_bytes("k", expected_md5=hashlib.md5(b"abc").hexdigest()) == b"abc"
    with pytest.raises(IntegrityError, match="k has md5"):
        store.get_bytes("k", expected_md5=hashlib.md5(b"abd").hexdigest())


@pytest.mark.parametrize(
    "key", ["", "/abs/key", "a/../b", "../up", "a//b", "a/./b", "a/", "a\\b", "bad\x00name"]
)
def test_bad_keys_are_refused_by_every_operation(store, key):
    for operation in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidKey):
            operation()


def test_missing_object_is_not_found(store, tmp_path):
    with pytest.raises(NotFound):
        store.get_bytes("nope")
    with pytest.raises(NotFound):
        store.stat("nope")
    with pytest.raises(NotFound):
        store.delete("nope")
    with pytest.raises(FileNotFoundError):  # NotFound is also the builtin, as in fsspec
        store.download("nope", tmp_path / "nope")
    assert not store.exists("nope")


def test_list_returns_sorted_stats_under_prefix(store):
    for key in ["j/journal/2.json", "j/journal/1.json", "j/shards/s.tar", "other/x", "j/journalx"]:
        store.put_bytes(key, key.encode())
    listed = store.list("j/journal/")
    assert [s.key for s in listed] == ["j/journal/1.json", "j/journal/2.json"]
    assert all(s.size == len(s.key) for s in listed)
    assert [s.key for s in store.list("j/journal")] == [
        "j/journal/1.json", "j/journal/2.json", "j/journalx"]
    assert len(store.list()) == 5


def test_list_folder_lists_one_level_objects_and_sub_folders(store):
    for key in ["j/journal/a.json", "j/journal/v2/2024-06/05T13/e.json", "j/journal/v2/2024-06/05T14/f.json",
                "j/journal/v2/2024-07/01T00/g.json", "j/shards/s.tar", "j/x", "top.bin"]:
        store.put_bytes(key, key.encode())
    journal = store.list_folder("j/journal/")
    assert [s.key for s in journal.objects] == ["j/journal/a.json"] and journal.folders == ["v2"]
    assert journal.objects[0].size == len("j/journal/a.json") and journal.objects[0].mtime > 0
    v2 = store.list_folder("j/journal/v2/")
    assert v2.objects == [] and v2.folders == ["2024-06", "2024-07"]
    assert store.list_folder("j/journal/v2/2024-06/").folders == ["05T13", "05T14"]
    leaf = store.list_folder("j/journal/v2/2024-06/05T13/")
    assert [s.key for s in leaf.objects] == ["j/journal/v2/2024-06/05T13/e.json"] and leaf.folders == []
    assert leaf.objects[0].mtime == store.stat("j/journal/v2/2024-06/05T13/e.json").mtime
    root = store.list_folder("")
    assert [s.key for s in root.objects] == ["top.bin"] and root.folders == ["j"]
    nothing = store.list_folder("j/nothing/")
    assert nothing.objects == [] and nothing.folders == []
    with pytest.raises(InvalidKey):
        store.list_folder("j/journal")  # a folder ends in '/'


def test_delete_removes_object_and_its_usage(store):
    store.put_bytes("d/x", b"12345")
    assert store.usage().used_bytes == 5
    store.delete("d/x")
    assert not store.exists("d/x")
    assert store.usage().used_bytes == 0


def test_stat_carries_the_store_time_of_the_write(store):
    before = time.time()
    first = store.put_bytes("t1", b"one")
    time.sleep(0.02)
    second = store.put_bytes("t2", b"two")
    after = time.time()
    assert before - 1 <= first.mtime <= second.mtime <= after + 1
    # A store whose clock ticks coarser than the gap (S3: whole seconds) may give both writes one
    # time; the journal then orders them by id (DESIGN §5). Finer ones must tell them apart.
    if store.time_resolution < 0.02:
        assert second.mtime > first.mtime
    else:
        assert first.mtime % store.time_resolution == 0 and second.mtime % store.time_resolution == 0
    assert store.stat("t1").mtime == first.mtime
    assert {s.key: s.mtime for s in store.list()} == {"t1": first.mtime, "t2": second.mtime}


def test_quota_exceeded_raises_and_leaves_nothing_partial(make_store):
    store = make_store(quota_bytes=1000)
    store.put_bytes("keep", b"k" * 600)
    with pytest.raises(QuotaExceeded, match="no room for big"):
        store.put_bytes("big", b"b" * 500)
    assert not store.exists("big")
    assert [s.key for s in store.list()] == ["keep"]
    assert store.usage().used_bytes == 600
    # Replacing an object counts only the difference, and a failed replace keeps the old object.
    store.put_bytes("keep", b"K" * 900)
    with pytest.raises(QuotaExceeded):
        store.put_bytes("keep", b"x" * 1001)
    assert store.get_bytes("keep") == b"K" * 900


def test_usage_reports_quota(make_store):
    store = make_store(quota_bytes=10_000)
    store.put_bytes("a", b"x" * 100)
    usage = store.usage()
    assert (usage.used_bytes, usage.limit_bytes, usage.free_bytes) == (100, 10_000, 9_900)


def test_put_is_atomic_under_concurrent_readers(store):
    # Each version is internally consistent (one repeated byte), so a torn read shows as mixed
    # bytes or a wrong length.
    size = 256 * 1024
    store.put_bytes("hot", bytes([0]) * size)
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader():
        while not stop.is_set():
            try:
                data = store.get_bytes("hot")
            except TransientError:
                continue  # a store may refuse a read that keeps being overtaken (Drive): never a torn one
            reads[0] += 1
            if len(data) != size or data.count(data[:1]) != size:
                problems.append(f"torn read: {len(data)} bytes, first {data[:1]!r}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in range(1, 40):
            store.put_bytes("hot", bytes([version]) * size)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert reads[0] > 0
    assert store.get_bytes("hot") == bytes([39]) * size


def test_list_keys_names_the_same_objects_as_list(store):
    for key in ["p/b", "p/a/x", "q/c"]:
        store.put_bytes(key, b"1")
    assert store.list_keys("p/") == ["p/a/x", "p/b"]
    assert store.list_keys() == [s.key for s in store.list()]


def test_get_with_stat_returns_bytes_and_the_write_time(store):
    written = store.put_bytes("e/1.json", b'{"a": 1}')
    data, stat = store.get_with_stat("e/1.json")
    assert data == b'{"a": 1}'
    assert (stat.size, stat.mtime, stat.md5) == (written.size, written.mtime, written.md5)
