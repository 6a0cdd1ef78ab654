"""Riding out a bad minute of storage: an action tried again with growing waits."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Callable, TypeVar

from dstack import defaults
from dstack.errors import ObjectNotFound, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_retries(action: Callable[[], T], what: str,
                 delays: Sequence[float] = defaults.STORAGE_RETRY_DELAYS) -> T:
    """Run ``action``; when storage fails, wait each of ``delays`` in turn and try again.

    Raises:
        StorageError: it still failed after the last try; the message says how often and how long.
    """
    started = time.monotonic()
    for attempt, delay in enumerate([*delays, None], start=1):
        try:
            return action()
        except ObjectNotFound:
            raise
        except StorageError as e:
            if delay is None:
                raise StorageError(f"{what} failed {attempt} times over {time.monotonic() - started:.0f} s; "
                                   f"the last error: {e}") from None
            log.warning("%s failed (%s); trying again in %g s", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
