"""The errors users see: each one's message is a complete sentence naming what and where."""


class ShardrunError(Exception):
    """Base of every error the CLI turns into a one-line `Error: ...` and a non-zero exit."""


class ConfigError(ShardrunError):
    """A job file, platform file or profile with one or more problems, all reported at once."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = [f"{source}: {len(self.problems)} {noun}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class DatasetError(ShardrunError):
    """The dataset cannot be used at all (missing folder, no usable image)."""


class PlanError(ShardrunError):
    """The job cannot be planned as described (not enough space, changed dataset, ...)."""


class LedgerError(ShardrunError):
    """The ledger or journal is unreadable or inconsistent."""


class StoreError(ShardrunError):
    """Base of the store's small error vocabulary."""


class NotFound(StoreError, FileNotFoundError):
    """No object under that key."""


class QuotaExceeded(StoreError):
    """The account has no room for the write; never retried."""


class PermissionDenied(StoreError, PermissionError):
    """The account may not read or write there."""


class TransientError(StoreError):
    """A failure worth retrying (network, rate limit); backends retry before raising it."""


class IntegrityError(StoreError):
    """An object's bytes do not match the hash they were expected to have."""


class InvalidKey(StoreError, ValueError):
    """A key that is not a clean relative path."""
