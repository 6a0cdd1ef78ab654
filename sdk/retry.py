"""How often a job may run again after it fails, and how long it may run at most."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Union

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|)\s*$", re.IGNORECASE)
_SECONDS_PER_UNIT = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration_s(value: Union[str, int, float, None], what: str = "duration") -> Optional[float]:
    """Parse ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a number of seconds.

    Returns seconds, or ``None`` for ``None``.

    Raises:
        ValueError: not a duration; the message names ``what``.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{what} must be a duration like '30s', '5m', '2h' or '1d', not {value!r}")
    number, unit = match.groups()
    return float(number) * _SECONDS_PER_UNIT[unit.lower()]


class Retry:
    """Run a failed job again, up to ``limit`` more times, waiting ``backoff`` before the first
    retry and twice as long before each next one (at most 10 minutes).

    A job is retried when it fails: it exits with another code than 0, runs out of memory, cannot
    start, or its worker is lost. It is not retried when it is stopped or runs past its
    ``max_duration``.

    Args:
        limit: how many times the job may run again.
        backoff: the wait before the first retry, e.g. ``"30s"``.
    """

    def __init__(self, limit: int = 3, backoff: Union[str, int, float] = "10s") -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"retry limit must be a whole number >= 0, not {limit!r}")
        if backoff is None:
            raise ValueError("retry backoff must be a duration like '30s', not None")
        self.limit = limit
        self.backoff_s = float(parse_duration_s(backoff, "retry backoff") or 0)

    @classmethod
    def from_value(cls, value: Any) -> Retry:
        """From workflow parameters: a limit (``retry: 3``) or ``{limit, backoff}``.

        Raises:
            ValueError: a key or value is wrong; the message says which.
        """
        if not isinstance(value, dict):
            return cls(limit=value)
        unknown = sorted(str(k) for k in value if k not in ("limit", "backoff"))
        if unknown:
            raise ValueError(f"retry: unknown key(s) {', '.join(unknown)}; the keys are limit and backoff")
        return cls(**value)

    def to_dict(self) -> Dict[str, Any]:
        """The wire form."""
        return {"limit": self.limit, "backoff_s": self.backoff_s}

    def __repr__(self) -> str:
        return f"Retry(limit={self.limit!r}, backoff_s={self.backoff_s!r})"
