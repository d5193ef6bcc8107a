"""Flow control for hosted APIs: honour ``Retry-After``, adapt concurrency to 429s.

A hosted endpoint (OpenAI, Together, a shared vLLM behind a gateway) answers HTTP 429
when we send faster than our quota. Retrying on a fixed schedule with a fixed number of
requests in flight keeps hitting the limit: every wave of retries is throttled again
and rows fail once their retries run out. Two things fix that, as TCP does for a
congested link:

- the server's own ``Retry-After`` (or OpenAI's ``retry-after-ms``) sets the wait
  before the retry, instead of our exponential guess (:func:`retry_after_seconds`);
- :class:`AdaptiveConcurrency` halves the number of requests in flight on a 429
  (once per wave: the requests that were already in flight when it halved do not halve
  it again) and adds one slot per window of successes (additive increase,
  multiplicative decrease), never above the recipe's ``concurrency``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["AdaptiveConcurrency", "SlotTimeout", "retry_after_seconds"]


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """How long the server asks us to wait, in seconds, or None if it does not say.

    ``retry-after-ms`` (OpenAI) wins over ``Retry-After``, which is either a number of
    seconds or an HTTP date (RFC 9110). A date in the past means "now" (0 s).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class SlotTimeout(Exception):
    """No request slot came free within the deadline."""


class AdaptiveConcurrency:
    """At most ``limit`` requests in flight; the limit follows the server's 429s (AIMD).

    Thread-safe: the batch's worker threads share one instance per LLM.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._limit = float(maximum)
        self._in_flight = 0
        self._wave = 0
        self._cond = threading.Condition()
        self.decreases = 0
        self.peak_in_flight = 0

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @contextmanager
    def slot(self, deadline_s: float) -> Iterator[int]:
        """Hold one request slot; yields the wave it was granted in (for :meth:`throttled`)."""
        end = time.monotonic() + deadline_s
        with self._cond:
            while self._in_flight >= self.limit:
                left = end - time.monotonic()
                if left <= 0:
                    raise SlotTimeout(
                        f"no request slot came free within {deadline_s:g}s"
                        f" ({self._in_flight} in flight, limit {self.limit})"
                    )
                self._cond.wait(left)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            wave = self._wave
        try:
            yield wave
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def succeeded(self) -> None:
        """Additive increase: one more slot after ``limit`` successes in a row."""
        with self._cond:
            if self._limit < self.maximum:
                self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
                self._cond.notify_all()

    def throttled(self, wave: int) -> tuple[int, int] | None:
        """Multiplicative decrease on a 429, once per wave; ``(old, new)`` when it halved."""
        with self._cond:
            if wave != self._wave:
                return None
            old = self.limit
            self._limit = max(1.0, self._limit / 2.0)
            self._wave += 1
            self.decreases += 1
            return old, self.limit
