"""Storage keys: each key builder and the function that reads it back are inverses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardrun import paths

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(lambda n: n not in (".", ".."))


@given(job=NAMES, shard_id=NAMES)
def test_shard_id_of_reads_back_what_shard_key_wrote(job, shard_id):
    key = paths.shard_key(job, shard_id)
    assert key.startswith(paths.shards_prefix(job))
    assert paths.shard_id_of(key) == shard_id


def test_shard_id_of_a_real_shard_key():
    assert paths.shard_key("demo", "shard-0123456789abcdef") == "demo/shards/shard-0123456789abcdef.tar"
    assert paths.shard_id_of("demo/shards/shard-0123456789abcdef.tar") == "shard-0123456789abcdef"


@given(job=NAMES, event_id=NAMES)
def test_event_id_of_reads_back_what_event_key_wrote(job, event_id):
    assert paths.event_id_of(paths.event_key(job, event_id)) == event_id


@given(job=NAMES, run=NAMES, worker=NAMES, chunk=st.integers(0, 99_999), generation=st.integers(0, 10_000),
       step=st.integers(0, 10**12 - 1))
def test_checkpoint_object_of_reads_back_checkpoint_and_pictures_keys(job, run, worker, chunk, generation, step):
    expected = {"run": run, "chunk": chunk, "generation": generation, "worker": worker, "step": step}
    for kind, key in (("ckpt", paths.checkpoint_key(job, run, chunk, generation, worker, step)),
                      ("val.png", paths.validation_pictures_key(job, run, chunk, generation, worker, step))):
        assert key.startswith(paths.checkpoints_prefix(job, run, chunk)) and key.startswith(paths.checkpoints_prefix(job, run))
        assert paths.checkpoint_object_of(job, key) == {**expected, "kind": kind}
    assert paths.checkpoint_object_of(job, f"{job}/checkpoints/{run}/notes.txt") is None
    assert paths.checkpoint_object_of(job + "x", paths.checkpoint_key(job, run, chunk, generation, worker, step)) is None
