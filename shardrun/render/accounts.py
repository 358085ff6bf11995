"""The job's accounts (shardrun.accounts.AccountInfo) as a rich table."""

from __future__ import annotations

from rich.table import Table

from shardrun.units import human_bytes


def accounts_table(infos, title: str) -> Table:
    """Returns one row per account: store, sign-in, identity, usage, limit and state."""
    table = Table(title=title, title_justify="left")
    for column in ("account", "store", "signs in with", "identity", "used", "limit", "state"):
        table.add_column(column, justify="right" if column in ("used", "limit") else "left")
    for info in infos:
        limit = "unlimited" if info.limit_bytes is None and info.used_bytes is not None else human_bytes(info.limit_bytes)
        table.add_row(info.name, info.store, info.signs_in, info.identity or "-",
                      human_bytes(info.used_bytes), limit, "ok" if info.ok else "FAILED")
    return table
