"""Client-side retry with exponential backoff and full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tandem._errors import Overloaded, TandemError

__all__ = ["RetryPolicy", "NO_RETRY"]


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a call that failed with a retryable error:
    one whose :attr:`TandemError.retryable` is true, as the error catalogue
    (``proto/tandem/v1/errors.proto``) says of its reason (QUEUE_FULL,
    OVERLOADED, RATE_LIMITED, COMPUTE_UNAVAILABLE, BROKER_UNAVAILABLE,
    SHUTTING_DOWN, TIMEOUT, INTERNAL_ERROR), or a bare UNAVAILABLE.
    UNAUTHENTICATED, TOKEN_EXPIRED and PERMISSION_DENIED are never retried.

    Retrying a submit is safe because every submit carries an idempotency
    key (one is generated when the caller gives none), so a retried submit
    whose first try did reach the server returns the same job.

    The policy governs single calls. Waiting (``watch``, ``wait``,
    ``JobHandle.result``, ``map``) goes on through retryable failures with
    this policy's backoff until the caller's own timeout instead.

    The n-th retry waits a random time in ``[0, min(max_backoff,
    initial_backoff * multiplier**n)]`` (full jitter), and at least the
    server's ``retry_after`` hint when it sent one.

    Attributes:
        max_attempts: tries in all, including the first (1 = no retry).
        initial_backoff: seconds; the cap of the first wait.
        max_backoff: seconds; the largest cap of any wait.
        multiplier: growth of the cap per retry.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def should_retry(self, error: TandemError, attempt: int) -> bool:
        """Whether to retry after ``error`` on try number ``attempt`` (1-based)."""
        return attempt < self.max_attempts and error.retryable

    def backoff(self, error: TandemError | None, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1``."""
        # The exponent stops growing once the cap is reached (waiters retry
        # without an attempt limit, and a float power overflows).
        growth = self.multiplier ** min(attempt - 1, 64)
        cap = min(self.max_backoff, self.initial_backoff * growth)
        delay = random.uniform(0, cap)
        # Overloaded and RateLimited (its subclass): the server's hint is a floor.
        if isinstance(error, Overloaded) and error.retry_after:
            delay = max(delay, min(error.retry_after, self.max_backoff * 4))
        return delay


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)
