"""Times as a user types them: durations (``30s``, ``5m``, ``2h``, ``7d``, ``1h30m``) and points in time
(a duration ago, or an ISO time, local when it names no zone)."""
from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Callable, Optional

import click

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: numbers each followed by a unit, ``s``, ``m``, ``h``, ``d`` or ``w`` (``90s``,
    ``1h30m``, ``7d``).

    Raises:
        ValueError: ``text`` is no such duration.
    """
    compact = text.strip().lower()
    if not _DURATION.match(compact):
        raise ValueError(f"'{text}' is not a duration: write a number and a unit, s, m, h, d or w "
                         "(30s, 5m, 2h, 7d, 1h30m)")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(compact))


def parse_since(text: str, now: Optional[float] = None) -> float:
    """The unix time ``text`` means: a duration ago (``5m``), or an ISO time (``2024-05-01T10:00``,
    ``2024-05-01 10:00:00+02:00``, ``...Z``), local time when it names no zone.

    Raises:
        ValueError: ``text`` is neither.
    """
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{text}' is neither a duration (30s, 5m, 2h, 1d) nor an ISO time "
                         "(2024-05-01T10:00, local time unless it names a zone)") from None
    return moment.timestamp()  # a naive time is local time


class _TimeParam(click.ParamType):
    """A click parameter read by ``parse`` (a number is taken as it is)."""

    def __init__(self, name: str, parse: Callable[[str], float]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: object, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return self._parse(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def Duration() -> click.ParamType:  # noqa: N802 - used as a click type, like click.Path()
    """A click parameter: a duration, in seconds."""
    return _TimeParam("duration", parse_duration)


def Since() -> click.ParamType:  # noqa: N802 - used as a click type, like click.Path()
    """A click parameter: a point in time (a duration ago, or an ISO time), as a unix time."""
    return _TimeParam("since", parse_since)
