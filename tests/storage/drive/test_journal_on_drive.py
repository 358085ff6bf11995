"""The bucketed journal on the Drive emulator: a sync of a two-day journal makes the same few
files.list calls as one of a young journal, and reads only the new event (issue 13, defect 8)."""

from __future__ import annotations

from shardrun import paths
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from tests.drive_accounts import drive_store_for, new_drive_account
from tests.ledger.test_db import plan_event

HOUR = 3600.0


def calls(emu, method: str) -> int:
    return sum(n for (_, m), n in emu.calls.items() if m == method)


def test_list_folder_lists_one_folder_whatever_lies_below(drive_emulator):
    emu = drive_emulator
    store = drive_store_for(emu, new_drive_account(emu))
    for i in range(30):
        store.put_bytes(f"j/journal/v2/2024-06/{i + 1:02d}T00/e{i}.json", b"{}")
    store.put_bytes("j/journal/flat.json", b"{}")
    store.list_folder("j/journal/v2/")  # the folder ids are looked up and remembered
    emu.reset_calls()
    assert store.list_folder("j/journal/v2/2024-06/").folders == [f"{d:02d}T00" for d in range(1, 31)]
    leaf = store.list_folder("j/journal/v2/2024-06/05T00/")
    assert [s.key for s in leaf.objects] == ["j/journal/v2/2024-06/05T00/e4.json"]
    assert calls(emu, "files.list") == 2  # one per folder listed, none for the 30 folders below
    assert store.list_folder("j/journal/").folders == ["v2"]


def test_a_sync_of_a_two_day_journal_on_drive_costs_what_one_of_a_young_journal_costs(drive_emulator, tmp_path):
    emu = drive_emulator
    account = new_drive_account(emu)
    store = drive_store_for(emu, account)
    journal = Journal(store, "j")
    journal.append("plan", "planner", payload=plan_event().payload)
    journal.append("claim", "w1", "r1", 0, 0)
    ledger = Ledger.open(tmp_path / "ledger.db")

    def steady_sync_cost() -> tuple[int, int]:
        journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 1})
        ledger.sync(journal)  # the cursor moves on to this hour
        journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 2})
        emu.reset_calls()
        result = ledger.sync(journal)
        assert result.new_events == 1
        return calls(emu, "files.list"), calls(emu, "files.get:media")

    young = steady_sync_cost()
    for hour in range(1, 48):  # two days of the Drive server's time, three events an hour
        emu.clock_offset = hour * HOUR
        for step in range(3):
            journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 3 + step})
        ledger.sync(journal)
    old = steady_sync_cost()
    buckets = Journal(drive_store_for(emu, account), "j").buckets(None)
    assert len(buckets) >= 48 and paths.bucket_folder(buckets[0]) != paths.bucket_folder(buckets[-1])
    assert old[1] == young[1] == 1  # the new event alone is read
    assert old[0] <= young[0] + 2  # a listing or two more (another month's or another bucket's), not 48
    fresh = Ledger.open(None)
    fresh.sync(Journal(drive_store_for(emu, account), "j"))
    assert fresh.dump() == ledger.dump()
