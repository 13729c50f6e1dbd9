"""Relative dates as people say them ("last week", "next month", "on Friday") resolved against a session date.

The synthetic conversations speak in relative dates while their labels carry absolute ones, written the
way LoCoMo's annotations and the pipeline's memory dates write them ("2 March 2024", "the week before 3
March 2024", "April 2024"), so an adapter learns to do this arithmetic from the session date.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PAST = ("yesterday", "two days ago", "last week", "last month", "last Monday", "last Tuesday", "last Wednesday",
        "last Thursday", "last Friday", "last Saturday", "last Sunday")
FUTURE = ("tomorrow", "next week", "next month", "on Monday", "on Tuesday", "on Wednesday", "on Thursday",
          "on Friday", "on Saturday", "on Sunday")


@dataclass(frozen=True)
class When:
    """A relative date and what it resolves to."""

    spoken: str  # as said in a turn: "last week"
    fact: str  # as a fact states it: "in the week before 3 March 2024"
    answer: str  # as a short answer gives it: "the week before 3 March 2024"
    last: dt.date  # the latest day it can mean (whether a plan is still ahead)


def day(d: dt.date) -> str:
    """The pipeline's date format (`conversations.display_date`): '3 March 2024'."""
    return f"{d.day} {d:%B} {d.year}"


def _month(d: dt.date, delta: int) -> tuple[str, dt.date]:
    """The month `delta` months from `d`'s, named, and its last day."""
    m = d.month - 1 + delta
    first = dt.date(d.year + m // 12, m % 12 + 1, 1)
    return f"{first:%B %Y}", (first + dt.timedelta(days=31)).replace(day=1) - dt.timedelta(days=1)


def _on(d: dt.date, spoken: str) -> When:
    return When(spoken, f"on {day(d)}", day(d), d)


def resolve(spoken: str, today: dt.date) -> When:
    """`spoken` (one of PAST or FUTURE) said on `today`. 'last Friday' is the latest Friday before today,
    'on Friday' the first Friday after it."""
    one = dt.timedelta(days=1)
    if spoken == "yesterday":
        return _on(today - one, spoken)
    if spoken == "two days ago":
        return _on(today - 2 * one, spoken)
    if spoken == "tomorrow":
        return _on(today + one, spoken)
    if spoken in ("last week", "next week"):
        side, end = ("before", today) if spoken == "last week" else ("after", today + 7 * one)
        return When(spoken, f"in the week {side} {day(today)}", f"the week {side} {day(today)}", end)
    if spoken in ("last month", "next month"):
        month, end = _month(today, -1 if spoken == "last month" else 1)
        return When(spoken, f"in {month}", month, end)
    word, name = spoken.split(" ", 1)
    if word in ("last", "on") and name in WEEKDAYS:
        target = WEEKDAYS.index(name)
        if word == "last":
            return _on(today - dt.timedelta(days=(today.weekday() - target - 1) % 7 + 1), spoken)
        return _on(today + dt.timedelta(days=(target - today.weekday() - 1) % 7 + 1), spoken)
    raise ValueError(f"unknown relative date {spoken!r}")
