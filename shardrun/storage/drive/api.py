"""The Drive v3 client for one account: endpoint, per-thread HTTP, retries and the error vocabulary.

google-api-python-client builds the requests; this module decides where they go (the real
Drive, or an endpoint override such as the test emulator), runs them with tenacity's jittered
exponential backoff, and turns what went wrong into the store's small error vocabulary.

Retried: 429, 5xx, 403 rateLimitExceeded / userRateLimitExceeded, dropped connections and
timeouts. Never retried: storageQuotaExceeded and dailyLimitExceeded (QuotaExceeded: the
coordinator places the shard on another account), refused credentials (PermissionDenied).
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any, Callable, TypeVar

import google.auth.exceptions
import google_auth_httplib2
import httplib2
from googleapiclient import discovery_cache
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay
from tenacity import wait_random_exponential

from shardrun.errors import NotFound, PermissionDenied, QuotaExceeded, StoreError, TransientError
from shardrun.storage.retry import RetryPolicy  # noqa: F401 (re-exported: the Drive store and backend import it from here)

log = logging.getLogger("shardrun.storage.drive")

T = TypeVar("T")

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
QUOTA_REASONS = frozenset({"storageQuotaExceeded", "dailyLimitExceeded", "quotaExceeded"})


class Conflict(StoreError):
    """HTTP 409: a create with an id that a file already has (a retried create that had succeeded)."""


class _Retry(Exception):
    """A failure worth another attempt; `why` says what it was, for the final message."""

    def __init__(self, why: str, retry_after: float | None = None):
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after  # the server's own Retry-After, in seconds


def retry_after_seconds(error: HttpError) -> float | None:
    """Returns the Retry-After of an answer, when it gives one in seconds (Drive does on some 429s)."""
    try:
        seconds = float(error.resp.get("retry-after", ""))
    except (AttributeError, TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def error_reason(error: HttpError) -> str:
    """Returns Drive's machine-readable reason (`storageQuotaExceeded`, ...), or '' if it gave none."""
    try:
        body = json.loads(error.content.decode("utf-8"))
        errors = body["error"].get("errors") or []
        if errors and errors[0].get("reason"):
            return str(errors[0]["reason"])
        return str(body["error"].get("status") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def quota_words(reason: str) -> str:
    """Returns what a quota refusal means, for messages."""
    if reason == "dailyLimitExceeded":
        return f"the account has reached its daily API limit ({reason}); try again tomorrow"
    return f"the account's Drive is full ({reason})"


def status_of(error: HttpError) -> int:
    return int(getattr(error.resp, "status", 0) or 0)


def static_drive_document(root_url: str | None) -> dict:
    """Returns Drive v3's discovery document, pointed at `root_url` when given.

    Setting rootUrl in the document (rather than client_options' api_endpoint) moves every URL
    the client builds, media uploads and batch included: they are all derived from it.
    """
    document = json.loads(discovery_cache.get_static_doc("drive", "v3"))
    if root_url:
        root = root_url if root_url.endswith("/") else root_url + "/"
        document["rootUrl"] = root
        document["mtlsRootUrl"] = root
        document["baseUrl"] = root + document["servicePath"]
    return document


class DriveClient:
    """One account's Drive service; safe to share between threads (each thread has its own HTTP)."""

    def __init__(self, credentials_provider: Callable[[], Any], *, subject: str, root_url: str | None = None,
                 retry: RetryPolicy | None = None, timeout_s: float = 60.0):
        self.subject = subject  # names the store and account in every message
        self.root_url = root_url
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._credentials_provider = credentials_provider
        self._credentials = None
        self._service = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self.calls = 0  # requests sent, retries included (benchmarks count API calls with it)

    @property
    def credentials(self):
        with self._lock:
            if self._credentials is None:
                self._credentials = self._credentials_provider()
            return self._credentials

    def http(self) -> google_auth_httplib2.AuthorizedHttp:
        """Returns this thread's authorized HTTP object (httplib2 objects are not thread-safe)."""
        authorized = getattr(self._local, "http", None)
        if authorized is None:
            transport = httplib2.Http(timeout=self.timeout_s)
            # A resumable upload answers 308 "resume incomplete", which is no redirect (as in
            # googleapiclient.http.build_http).
            transport.redirect_codes = transport.redirect_codes - {308}
            authorized = google_auth_httplib2.AuthorizedHttp(self.credentials, http=transport)
            self._local.http = authorized
        return authorized

    @property
    def files(self):
        return self.service.files()

    @property
    def service(self):
        if self._service is None:
            service = build_from_document(static_drive_document(self.root_url), http=self.http())
            with self._lock:
                self._service = self._service or service
        return self._service

    # -- running calls --------------------------------------------------------------------------

    def execute(self, what: str, request_factory: Callable[[], Any], on_404: Callable[[HttpError], Exception] | None = None):
        """Returns the response of the request `request_factory()` builds, retrying transient failures.

        `what` names the operation in messages ("upload of a/b"); `on_404` turns a 404 into the
        caller's error (by default NotFound).
        """
        return self.run(what, lambda: request_factory().execute(http=self.http()), on_404)

    def run(self, what: str, attempt: Callable[[], T], on_404: Callable[[HttpError], Exception] | None = None) -> T:
        """Returns `attempt()`, retried with jittered exponential backoff while it fails transiently."""
        policy = self.retry
        started = time.monotonic()
        tries = [0]

        def one_try():
            self.calls += 1
            tries[0] += 1
            try:
                return attempt()
            except StoreError:
                raise  # already in the store's vocabulary (some are OSErrors too: not a network failure)
            except HttpError as e:
                raise self._classify_http(what, e, on_404) from e
            except google.auth.exceptions.RefreshError as e:
                if getattr(e, "retryable", False):
                    raise _Retry("the token endpoint failed") from e
                raise self.refused(what) from e
            except google.auth.exceptions.TransportError as e:
                raise _Retry("the token endpoint could not be reached") from e
            except (OSError, http.client.HTTPException, httplib2.HttpLib2Error) as e:
                raise _Retry(f"connection failed: {type(e).__name__}") from e

        def log_retry(state: RetryCallState):
            why = state.outcome.exception().why if state.outcome else "?"
            log.info("%s: %s failed (%s); retry %d in %.1f s", self.subject, what, why,
                     state.attempt_number, state.next_action.sleep if state.next_action else 0)

        backoff = wait_random_exponential(multiplier=policy.first_wait_seconds, max=policy.max_wait_seconds)

        def wait(state: RetryCallState) -> float:
            # A server that says how long to wait is believed, up to the whole retry budget.
            asked = getattr(state.outcome.exception(), "retry_after", None) if state.outcome else None
            return max(backoff(state), min(asked or 0.0, policy.total_seconds))

        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_seconds),
            wait=wait,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            return retrying(one_try)
        except _Retry as e:
            elapsed = time.monotonic() - started
            raise TransientError(
                f"{self.subject}: {what} still failing after {tries[0]} attempts "
                f"in {elapsed:.1f} s (last: {e.why}); Drive is rate-limiting or unreachable, try again later"
            ) from e.__cause__

    def refused(self, what: str) -> PermissionDenied:
        return PermissionDenied(
            f"{self.subject}: Drive refused the account's credentials during {what} (expired or revoked); "
            "sign in again (`shardrun accounts login`, or Colab's sign-in) and retry"
        )

    def _classify_http(self, what: str, error: HttpError, on_404) -> Exception:
        status, reason = status_of(error), error_reason(error)
        if status == 429 or status >= 500 or (status == 403 and reason in RATE_LIMIT_REASONS):
            return _Retry(f"HTTP {status} {reason}".rstrip(), retry_after_seconds(error))
        if status == 403 and reason in QUOTA_REASONS:
            error = QuotaExceeded(f"{self.subject}: {what} refused: {quota_words(reason)}")
            error.drive_reason = reason
            return error
        if status == 401:
            return self.refused(what)
        if status == 404:
            return on_404(error) if on_404 else NotFound(f"{self.subject}: {what}: not found")
        if status == 409:
            return Conflict(f"{self.subject}: {what}: a file with that id already exists")
        if status == 403:
            return PermissionDenied(f"{self.subject}: {what} is not allowed for this account "
                                    f"(HTTP 403 {reason or 'forbidden'}); check the folder is shared with it as editor")
        return StoreError(f"{self.subject}: {what} failed: HTTP {status} {reason}".rstrip())
