"""What only MemoryStore does (the shared contract runs in test_contract.py)."""

from __future__ import annotations

from shardrun.storage.memory import MemoryStore


def test_memory_store_time_comes_from_its_clock():
    from shardrun.clock import FakeClock

    clock = FakeClock(start=5000.0)
    store = MemoryStore(clock=clock)
    assert store.put_bytes("a", b"1").mtime == 5000.0
    clock.advance(7)
    assert store.put_bytes("b", b"2").mtime == 5007.0
