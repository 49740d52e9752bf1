"""Time stamps as every file of a run holds them: ISO 8601 in UTC, to the second, written and parsed here alone.

A stamp without a time zone would compare with an aware one by raising (status, the MLflow export): it is refused
where it is read, in one line, like any impossible field.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """Now, as a stamp: 2026-01-31T12:34:56+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_utc(text: object) -> datetime:
    """The moment a stamp names; ValueError when it is not an ISO 8601 time with its time zone."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a time stamp")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when
