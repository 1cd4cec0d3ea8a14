"""Retries with exponential backoff and full jitter, for transient store errors."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6          # tries in all, the first included
    base_delay: float = 0.2    # seconds before the second try
    max_delay: float = 10.0    # cap of one wait

    def delay(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str,
) -> T:
    """Run `operation` until it succeeds, a permanent error occurs, or the
    policy's attempts are used up; the last error is re-raised as it was."""
    failures = 0
    while True:
        try:
            return await operation()
        except Exception as error:
            failures += 1
            if not is_transient(error) or failures >= policy.attempts:
                raise
            wait = policy.delay(failures)
            log.info("%s failed (%s), retry %d/%d in %.2fs",
                     what, error, failures, policy.attempts - 1, wait)
            await trio.sleep(wait)
