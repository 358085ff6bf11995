"""`status --watch`: a view refreshed in place until Ctrl-C (or a number of refreshes).

On a terminal the view is redrawn in place with rich's Live display; piped into a file or a log,
each refresh is appended after a rule, so the log keeps every state it saw.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.rule import Rule
from rich.text import Text


def _stamped(view: RenderableType, count: int, seconds: float) -> Group:
    stamp = datetime.now().strftime("%H:%M:%S")
    return Group(Text(f"Refresh {count} at {stamp} (every {seconds:g} s; Ctrl-C to stop)", style="dim"), view)


def watch(console: Console, make_view: Callable[[], RenderableType], seconds: float,
          refreshes: int | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """Shows `make_view()` every `seconds` until Ctrl-C or `refreshes` views; returns how many were shown."""
    count = 0
    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
                while refreshes is None or count < refreshes:
                    if count:
                        sleep(seconds)
                    count += 1
                    live.update(_stamped(make_view(), count, seconds), refresh=True)
        else:
            while refreshes is None or count < refreshes:
                if count:
                    sleep(seconds)
                count += 1
                console.print(Rule())
                console.print(_stamped(make_view(), count, seconds))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: leave the last view on the screen
    return count
