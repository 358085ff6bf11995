"""A small declarative validator for TOML tables: the job file, the platform, profile and price
files, and each store backend's own job-file keys.

It sits on the ground floor (it imports nothing of shardrun but the errors) so that config and
every storage backend can declare their keys with it without importing one another.
Validation reads a whole table before it complains: every problem names the key, the value given
and what is allowed, and an unknown key comes with a did-you-mean.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shardrun.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One allowed key: its type, whether it is required, its default and an extra check."""

    kind: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    check: Callable[[Any], str | None] | None = None  # returns what is allowed, or None if ok


def positive(value) -> str | None:
    return None if value > 0 else "a number greater than 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "a number of 0 or more"


def one_of(*allowed) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else "one of " + ", ".join(map(repr, allowed))


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table", list: "a list"}


def show(value) -> str:
    """Returns a value as the user wrote it in TOML (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def _is_kind(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # TOML's true is not the integer 1
    return isinstance(value, kinds)


def unknown_key_problem(where: str, key: str, allowed) -> str:
    """Returns the problem line for an unknown key, with a did-you-mean where one is close."""
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; allowed: " + ", ".join(allowed)
    return f"{where}{key}: unknown key{hint}"


def check_table(table: Any, where: str, spec: dict[str, Key], problems: list[str]) -> dict[str, Any]:
    """Returns the table's values with defaults filled in; appends every problem found."""
    if not isinstance(table, dict):
        problems.append(f"{where.rstrip('.')}: expected a table, got {table!r}")
        return {}
    values = {}
    for key in table:
        if key not in spec:
            problems.append(unknown_key_problem(where, key, spec))
    for key, rule in spec.items():
        if key not in table:
            if rule.required:
                problems.append(f"{where}{key}: missing (required, {_kind_name(rule.kind)})")
            values[key] = rule.default
            continue
        value = table[key]
        if not _is_kind(value, rule.kind):
            problems.append(f"{where}{key} = {show(value)}: must be {_kind_name(rule.kind)}")
            values[key] = rule.default
            continue
        if rule.check and (allowed := rule.check(value)):
            problems.append(f"{where}{key} = {show(value)}: must be {allowed}")
        values[key] = value
    return values


def read_text_file(path: Path, missing: str = "no such file") -> str:
    """Returns the UTF-8 text of a file the user named; any problem is a ConfigError naming the path."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(str(path), [missing]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})"]) from e
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from e


def read_toml(text: str, source: str) -> dict:
    """Returns the TOML document `text`; a syntax error is a ConfigError naming `source`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from e
