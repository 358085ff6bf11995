"""Builds tests/data/ledger-v2.db: a ledger written by shardrun's schema-2 code (commit 7280c76).

Run it with that version of shardrun (`git worktree add /tmp/v2 7280c76` and
`PYTHONPATH=/tmp/v2 python tests/data/make_ledger_v2.py`); the file it writes is committed, so the
migration test opens a database that older code really produced, not one rebuilt by today's code.
Its events carry the heartbeat payload of that time (step, loss, patches_per_second; no platform,
device or validation).
"""

from __future__ import annotations

import sys
from pathlib import Path

from shardrun.journal import Event
from shardrun.ledger.schema import SCHEMA_VERSION
from shardrun.ledger.db import Ledger

assert SCHEMA_VERSION == 2, "run this with shardrun's schema-2 code"

T0 = 1_700_000_000.0


def plan() -> Event:
    runs = [{"name": "r1", "model": "decusr", "scale": 2, "channels": 1, "epochs": 3, "batch_size": 8,
             "patch_size": 32, "steps_per_epoch": 100, "steps_total": 300, "step_seconds": 0.1, "config": {},
             "chunks": [[0, 100], [100, 200], [200, 300]]}]
    payload = {"plan_id": "plan-v2", "replaces": None, "job": "old-job", "fingerprint": "f", "images": 10,
               "image_bytes": 1000, "manifest_key": "old-job/plans/m.json", "manifest_md5": "0",
               "platform": "colab-free", "profile": "p", "lease_seconds": 600.0,
               "accounts": [{"name": "alice", "store": "memory://a", "quota_bytes": 10**9, "reserve_bytes": 0}],
               "shards": [{"id": "shard-1", "account": "alice", "key": "old-job/shards/shard-1.tar", "size": 500,
                           "md5": "x", "images": 10}],
               "runs": runs, "rejected": []}
    return Event("0000000000000001-plan", "plan", "planner", payload=payload, server_time=T0)


def ev(n: int, kind: str, t: float, worker: str, chunk: int, generation: int, **payload) -> Event:
    return Event(f"{int((T0 + t) * 1e6):016x}-{n:04d}", kind, worker, "r1", chunk, generation, payload,
                 server_time=T0 + t)


def events() -> list[Event]:
    out = [plan(), ev(1, "claim", 10, "w1", 0, 0)]
    for i, step in enumerate((20, 40, 60)):
        out.append(ev(2 + i, "heartbeat", 130 + 120 * i, "w1", 0, 0, step=step, loss=0.05 - 0.01 * i,
                      patches_per_second=80.0))
    out.append(ev(5, "checkpoint", 400, "w1", 0, 0, step=60, key="old-job/checkpoints/a", md5="m1"))
    out.append(ev(6, "done", 800, "w1", 0, 0, key="old-job/checkpoints/b", md5="m2"))
    out.append(ev(7, "claim", 900, "w2", 1, 0))
    out.append(ev(8, "heartbeat", 1020, "w2", 1, 0, step=130, loss=0.02, patches_per_second=40.0))
    return out


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("ledger-v2.db"))
    out.unlink(missing_ok=True)
    ledger = Ledger.open(out)
    ledger.add_events(events())
    ledger.db.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, as a snapshot is
    ledger.close()
    print(f"wrote {out}")
