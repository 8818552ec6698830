"""Requests per minute per caller: a token bucket per (token name, kind of request).

A bucket holds up to one minute's allowance and refills continuously, so a caller may
burst up to its per-minute figure and then keeps to the rate on average (Replicate's
limits read the same way). The buckets live in this API process's memory: with several
API processes behind a balancer each enforces the figure on its own. The clock is a
parameter so that tests move time instead of sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sdserve.errors import RateLimited

Clock = Callable[[], float]


class RequestKind(Enum):
    """What a request is charged as: Replicate counts creates apart from everything else."""

    CREATE = "creates_per_minute"
    READ = "reads_per_minute"


@dataclass
class _Bucket:
    per_minute: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one request's token: 0 when granted, else the seconds until one is there."""
        rate = self.per_minute / 60.0
        self.tokens = min(float(self.per_minute), self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class RateLimiter:
    """The buckets of every caller; thread-safe (gRPC and HTTP share one)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, RequestKind], _Bucket] = {}
        self._lock = threading.Lock()

    def charge(self, caller: str, kind: RequestKind, per_minute: int | None) -> None:
        """Count one request of ``caller``; raise :class:`RateLimited` (with the whole
        seconds to wait as ``retry_after``) when its bucket is empty. ``per_minute``
        None: no limit."""
        if per_minute is None:
            return
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get((caller, kind))
            if bucket is None or bucket.per_minute != per_minute:
                bucket = _Bucket(per_minute, float(per_minute), now)
                self._buckets[(caller, kind)] = bucket
            wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(
                f"{caller} is over its limit of {per_minute} {_noun(kind)} per minute; "
                f"retry in {math.ceil(wait)} s",
                retry_after=max(1, math.ceil(wait)),
            )


def _noun(kind: RequestKind) -> str:
    return "creates" if kind is RequestKind.CREATE else "reads"
