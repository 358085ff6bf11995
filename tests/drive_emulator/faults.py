"""Faults injected into the emulator's answers: rules matched per API method and account."""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field

from .model import DriveError

ERROR_KINDS = {
    "rate_limit": (429, "usageLimits", "rateLimitExceeded", "Rate Limit Exceeded"),
    "rate_limit_403": (403, "usageLimits", "rateLimitExceeded", "Rate Limit Exceeded"),
    "user_rate_limit": (403, "usageLimits", "userRateLimitExceeded", "User Rate Limit Exceeded"),
    "daily_limit": (403, "usageLimits", "dailyLimitExceeded", "Daily Limit Exceeded"),
    "quota_exceeded": (403, "usageLimits", "storageQuotaExceeded",
                       "The user's Drive storage quota has been exceeded."),
    "backend_error": (500, "global", "backendError", "Backend Error"),
    "bad_gateway": (502, "global", "badGateway", "Bad Gateway"),
    "unavailable": (503, "global", "backendError", "The service is currently unavailable."),
}
# Kinds handled by the HTTP layer rather than answered with an error body.
ACTION_KINDS = {"drop", "expire_session", "partial_range"}


@dataclass
class Fault:
    """One rule: after skipping `after` matching calls, the next `times` matching calls fail."""

    kind: str
    methods: tuple[str, ...]
    account: str | None
    times: float
    after: int
    params: dict = field(default_factory=dict)
    fired: int = 0
    seen: int = 0

    def matches(self, method: str, account: str | None) -> bool:
        if self.account is not None and account != self.account:
            return False
        return any(fnmatch.fnmatchcase(method, pattern) for pattern in self.methods)

    def error(self) -> DriveError:
        status, domain, reason, message = ERROR_KINDS[self.kind]
        headers = {"Retry-After": str(self.params["retry_after"])} if "retry_after" in self.params else {}
        return DriveError(status, reason, message, domain=domain, headers=headers)


class Faults:
    """The emulator's fault rules (`emu.faults`); every method is safe to call from any thread.

    add(kind, times=1, methods="*", account=None, after=0, **params) -> Fault
        kind: one of rate_limit (429), rate_limit_403, user_rate_limit, daily_limit,
        quota_exceeded (403s), backend_error (500), bad_gateway (502), unavailable (503) — answered
        with Drive's error body — or one of the actions:
          drop            close the connection (TCP reset) without answering. On a resumable chunk
                          (`upload.chunk`) the emulator first reads and keeps `keep` bytes of the
                          chunk (default: half), so a later status query reports them. Elsewhere
                          `processed=True` carries the request out before dropping the answer.
          expire_session  the resumable session the chunk belongs to expires: 404 from now on.
          partial_range   a media download serves at most `serve` bytes (206, honest Content-Range).
        methods: fnmatch patterns over API method names (see the package docstring), e.g. "upload.*".
        retry_after=N (error kinds) adds a Retry-After header.
    clear()                   drops every rule.
    listing_lag               seconds a new or rewritten file stays out of files.list (files.get sees it);
                              lowering it shortens the lag of files already written too (0: list all now).
    fired(kind=None)          how many injected faults fired, in all or of one kind.
    """

    def __init__(self, drive):
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self._drive = drive
        self.log: list[tuple[str, str, str | None]] = []     # (kind, method, account) as they fired

    def add(self, kind: str, times: float = 1, methods="*", account: str | None = None, after: int = 0,
            **params) -> Fault:
        if kind not in ERROR_KINDS and kind not in ACTION_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(ERROR_KINDS) + sorted(ACTION_KINDS)}")
        patterns = (methods,) if isinstance(methods, str) else tuple(methods)
        fault = Fault(kind, patterns, account, times, after, params)
        with self._lock:
            self._rules.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, account: str | None, kinds=None) -> Fault | None:
        """The rule that fires for this call, if any (consuming one of its `times`)."""
        with self._lock:
            for fault in self._rules:
                if (kinds is not None and fault.kind not in kinds) or not fault.matches(method, account):
                    continue
                fault.seen += 1
                if fault.seen <= fault.after or fault.fired >= fault.times:
                    continue
                fault.fired += 1
                self.log.append((fault.kind, method, account))
                return fault
            return None

    def fired(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for logged in self.log if kind is None or logged[0] == kind)

    @property
    def listing_lag(self) -> float:
        return self._drive.listing_lag

    @listing_lag.setter
    def listing_lag(self, seconds: float) -> None:
        self._drive.set_listing_lag(float(seconds))
